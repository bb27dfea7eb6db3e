"""`tunelab plan`: peak memory, time and cost of a training run before it runs, with every assumption printed.

Memory term by term (tunelab.planner.memory), time from the data pipeline's own token count and a throughput that
is either measured by a short calibration run on this machine or derived from a device table (peak FLOP/s x an
assumed utilization; tunelab.planner.timing, tunelab.planner.devices), cost at a given price per hour, and advice
(fits; else gradient checkpointing, a smaller micro-batch, LoRA, QLoRA). `train` prints the one-line summary at
start (no calibration there). bench/plan_check.py compares the plan with measured runs (docs/tuning.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.planner import memory, timing
from tunelab.planner.devices import DEVICES, Device, this_machine
from tunelab.planner.shape import ModelShape, shape_of

__all__ = ["DEVICES", "DataCounts", "Estimate", "estimate"]
GB = 2**30
SEQS_PER_ITEM = {"pairs": 2}  # a preference pair is two sequences (chosen, rejected) in one batch


@dataclass
class DataCounts:
    """What the data pipeline counted: examples and tokens of the train and eval splits."""

    train_examples: int
    train_tokens: int
    eval_examples: int
    eval_tokens: int
    max_len: int  # the longest example after truncation
    labelled: float  # fraction of tokens that carry a label

    @classmethod
    def from_report(cls, report: dict[str, Any], max_length: int) -> DataCounts:
        """From tunelab.api.validate's report (per dataset: records, train, eval, tokens, train_tokens,
        trainable_tokens)."""
        sets = report.get("datasets", [])
        if not sets or "tokens" not in sets[0]:
            raise TunelabError("plan: the data report has no token counts (only sft-style data is planned)")
        tr = ev = tt = et = lab = 0.0
        for d in sets:
            total = max(d.get("train", 0) + d.get("eval", 0), 1)
            tr, ev = tr + d.get("train", 0), ev + d.get("eval", 0)
            train = d["train_tokens"] if "train_tokens" in d else d["tokens"] * d.get("train", 0) / total
            tt, et = tt + train, et + d["tokens"] - train
            lab += d.get("trainable_tokens", d["tokens"])
        longest = max(min(d["length"]["max"], max_length) for d in sets)
        n_tokens = sum(d["tokens"] for d in sets)
        return cls(int(tr), int(tt), int(ev), int(et), int(longest), lab / max(n_tokens, 1))

    @classmethod
    def from_lengths(cls, train: list[int], eval_: list[int], labelled_tokens: int) -> DataCounts:
        return cls(len(train), sum(train), len(eval_), sum(eval_), max(train, default=1),
                   labelled_tokens / max(sum(train), 1))  # fmt: skip


@dataclass
class Estimate:
    device: Device
    shape: ModelShape
    memory: dict[str, float]  # bytes per term
    micro_batch: int
    seq_peak: int
    seq_mean: int
    steps: int
    micro_batches: int
    tokens: int  # tokens the training steps process (padding and packing included)
    seconds_micro: float
    throughput: str  # where seconds_micro came from
    seconds: dict[str, float]  # startup, train, eval
    price_per_hour: float | None = None
    assumptions: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return sum(self.memory.values())

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def cost(self) -> float | None:
        return self.total_seconds / 3600 * self.price_per_hour if self.price_per_hour else None

    @property
    def fits(self) -> bool:
        return self.peak <= self.device.memory_gb * GB

    def summary(self) -> str:
        cost = f", ~${self.cost:,.2f}" if self.cost is not None else ""
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"plan: peak ~{self.peak / GB:.2f} GB ({verdict} in {self.device.memory_gb:g} GB, {self.device.name}); "
                f"{self.steps} steps, {self.tokens:,} tokens, ~{_duration(self.total_seconds)}{cost} "
                f"(`tunelab plan` for details)")  # fmt: skip


def estimate(cfg: RunConfig, counts: DataCounts, device: str | None = None, price_per_hour: float | None = None,
             calibrate: bool = False, runtime_bytes: float | None = None) -> Estimate:  # fmt: skip
    dev = _device(device, cfg)
    shape = shape_of(cfg)
    seqs = SEQS_PER_ITEM.get(_data_kind(cfg), cfg.method.grpo.group_size if cfg.method.name == "grpo" else 1)
    b = cfg.train.batch_size * seqs
    if cfg.data.packing:
        rows, seq_peak = math.ceil(counts.train_tokens / cfg.data.max_length), cfg.data.max_length
        seq_mean = seq_peak
    else:
        rows, seq_peak = counts.train_examples, counts.max_len
        seq_mean = max(1, round(counts.train_tokens / max(counts.train_examples, 1)))
    steps = timing.steps_of(cfg, rows)
    micro = steps * cfg.train.grad_accum
    runtime = runtime_bytes if runtime_bytes is not None else timing.runtime_rss()
    peak_batch = min(b, max(rows, 1) * seqs)  # a data set smaller than one micro-batch
    mem = memory.memory_terms(cfg, shape, dev, memory.Batch(peak_batch, seq_peak, counts.labelled), runtime)
    flops = timing.micro_flops(cfg, shape, b, seq_mean, counts.labelled)
    if calibrate:
        if device:
            raise TunelabError("plan: --calibrate measures this machine; it cannot be combined with --device")
        sec = timing.calibrate(cfg, b, seq_mean, counts.labelled)
        source = "measured (calibration run on this machine)"
    else:
        sec = timing.flops_seconds(flops, dev.tflops, dev.utilization)
        source = f"{dev.name}: {dev.tflops:g} TFLOP/s peak x {dev.utilization:.0%} assumed utilization"
    fwd_share = flops.forward / (flops.forward + flops.backward)
    eval_sec = (
        timing.evals_of(cfg, steps, counts.eval_examples > 0) * counts.eval_tokens / (b * seq_mean) * sec * fwd_share
    )
    seconds = {"startup": timing.STARTUP_S, "train": micro * sec, "eval": eval_sec}
    est = Estimate(dev, shape, mem, b, seq_peak, seq_mean, steps, micro, micro * b * seq_mean, sec,
                   timing.describe_throughput(source, sec, b * seq_mean), seconds, price_per_hour)  # fmt: skip
    est.assumptions = _assumptions(cfg, est, counts, runtime_bytes is None)
    est.advice = _advice(cfg, est)
    return est


def _data_kind(cfg: RunConfig) -> str:
    from tunelab.methods import METHODS

    return METHODS[cfg.method.name].data


def _device(name: str | None, cfg: RunConfig) -> Device:
    if name is None:
        return this_machine(cfg.train.threads)
    key = name.lower()
    if key == "cpu":
        return this_machine(cfg.train.threads) if not _cuda() else DEVICES["cpu"]
    if key not in DEVICES:
        raise TunelabError(f"plan --device: unknown device {name!r}; known: cpu, {', '.join(DEVICES)}")
    return DEVICES[key]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _assumptions(cfg: RunConfig, est: Estimate, counts: DataCounts, measured_runtime: bool) -> list[str]:
    packing = (f"packed rows of {cfg.data.max_length} tokens" if cfg.data.packing else
               f"unpacked: memory at the longest example ({est.seq_peak} tokens), time at the mean ({est.seq_mean}; "
               "group_by_length keeps padding small)")  # fmt: skip
    out = [
        f"data: {counts.train_examples:,} train examples, {counts.train_tokens:,} tokens ({packing}); "
        f"{counts.labelled:.0%} of tokens labelled; {counts.eval_examples:,} eval examples",
        f"micro-batch {est.micro_batch} sequences; {est.steps} optimizer steps x {cfg.train.grad_accum} micro-batches",
        f"throughput {est.throughput}",
        f"start-up and closing (accelerator, model build, final/, report): {timing.STARTUP_S:g} s assumed",
        "runtime memory: "
        + (
            "this process's resident memory now (Python, torch, libraries, data)"
            if measured_runtime and not est.device.gpu
            else "CUDA context 0.6 GB assumed"
            if est.device.gpu
            else "given"
        ),  # fmt: skip
        "activations: Llama-style blocks (docs/tuning.md has the formula); other architectures are approximate",
        "optimizer: AdamW, two fp32 moments per trainable parameter",
    ]
    if cfg.eval.metrics and any(m not in ("loss", "perplexity") for m in map(str, cfg.eval.metrics)):
        out.append("not included: generation-based eval metrics (their time grows with eval.max_new_tokens)")
    return out


def _advice(cfg: RunConfig, est: Estimate) -> list[str]:
    room = est.device.memory_gb * GB
    if est.fits:
        tight = est.peak > 0.85 * room
        return [f"fits: {est.peak / GB:.2f} of {est.device.memory_gb:g} GB" + (" (tight: above 85%)" if tight else "")]
    out = [f"does not fit: {est.peak / GB:.2f} GB needed, {est.device.memory_gb:g} GB available"]
    act = est.memory["activations"]
    if not cfg.train.gradient_checkpointing:
        out.append(f"train.gradient_checkpointing: true keeps one block's activations instead of all "
                   f"(activations are {act / GB:.2f} GB now)")  # fmt: skip
    if cfg.train.batch_size > 1:
        out.append(f"a smaller micro-batch: train.batch_size {cfg.train.batch_size // 2} with train.grad_accum "
                   f"{cfg.train.grad_accum * 2} (the same batch per step, about half the activations)")  # fmt: skip
    if cfg.tuning.mode in ("full", "freeze"):
        out.append("tuning.mode: lora drops the gradients and optimizer states of the base weights")
    if cfg.tuning.mode in ("lora", "dora", "full") and est.device.gpu:
        out.append("tuning.mode: qlora stores the frozen base in 4 bits (about a quarter of bf16)")
    return out


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def render(est: Estimate) -> list[str]:
    """The plan as lines of text: memory terms, time, cost, advice, assumptions."""
    lines = [f"device: {est.device.name} ({est.device.memory_gb:g} GB)",
             f"model: {est.shape.base_params:,} parameters, {est.shape.trainable:,} trainable, "
             f"{est.shape.layers} blocks x {est.shape.hidden} hidden", "peak memory:"]  # fmt: skip
    lines += [f"  {k:<12}{v / 2**20:>12,.1f} MB" for k, v in est.memory.items()]
    lines.append(f"  {'total':<12}{est.peak / 2**20:>12,.1f} MB")
    lines.append(
        f"time: ~{_duration(est.total_seconds)} (" + ", ".join(f"{k} {v:,.1f} s" for k, v in est.seconds.items()) + ")"
    )
    if est.cost is not None:
        lines.append(f"cost: ~${est.cost:,.2f} at ${est.price_per_hour:g}/h")
    lines += ["advice:"] + [f"  {a}" for a in est.advice]
    lines += ["assumptions:"] + [f"  {a}" for a in est.assumptions]
    return lines
