"""Training time: optimizer steps x micro-batches x the time of one micro-batch, plus evaluations and start-up.

The time of a micro-batch is measured (a calibration run: the real model and tuning mode on this machine, random
tokens of the run's micro-batch shape, forward + backward + AdamW, after a warm-up step) or derived from the
device table: model FLOPs / (peak FLOP/s x assumed utilization). Model FLOPs of a micro-batch of T tokens:
forward 2 x (the blocks' linear parameters) x T + 4 x layers x hidden x seq x T (attention scores and values)
+ 2 x vocab x hidden x the labelled tokens (tunelab's SFT projects only those); backward twice the forward for
full tuning, once for adapters (activation gradients only; the frozen weights get none), and for freeze only the
trained blocks' share twice. An evaluation is a forward pass over the eval tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.planner.shape import ModelShape

STARTUP_S = 3.0  # accelerator, tokenizer, model build, final/ and the report: an assumption, printed


@dataclass
class Flops:
    forward: float  # per micro-batch
    backward: float


def micro_flops(cfg: RunConfig, shape: ModelShape, batch: int, seq: int, labelled: float) -> Flops:
    tokens = batch * seq
    blocks = 2 * shape.linear_params * tokens + 4 * shape.layers * shape.hidden * seq * tokens
    head = 2 * shape.vocab * shape.hidden * tokens * (labelled if cfg.method.name == "sft" else 1.0)
    mode = cfg.tuning.mode
    if mode == "full":
        back = 2 * (blocks + head)
    elif mode == "freeze":
        back = (
            2 * blocks * shape.trainable_layers / max(shape.layers, 1)
            + (2 if cfg.tuning.freeze.train_head else 1) * head
        )
    else:
        back = blocks + head
    return Flops(blocks + head, back)


def calibrate(cfg: RunConfig, batch: int, seq: int, labelled: float, steps: int = 5) -> float:
    """Seconds of one micro-batch (forward, backward, the optimizer step) measured on this machine: the fastest of
    `steps` after two warm-up steps (the least disturbed by other processes on a shared machine)."""
    from tunelab.methods.sft import loss
    from tunelab.models.tuning import apply_tuning, load_for_tuning

    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    dtype = torch.float32 if cfg.tuning.mode in ("full", "freeze") and cfg.model.dtype == "auto" else None
    model: Any = apply_tuning(load_for_tuning(cfg.model, cfg.tuning, dtype=dtype), cfg.tuning)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen).to(device)
    labels = ids.clone()
    labels[:, : int(seq * (1 - labelled))] = -100
    batch_ = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        out = loss(model, batch_)
        out.loss_sum.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # the first steps warm up kernels and allocations
            times.append(time.perf_counter() - start)
    del model, opt
    return min(times)


def steps_of(cfg: RunConfig, rows: int) -> int:
    t = cfg.train
    per_epoch = math.ceil(math.ceil(rows / t.batch_size) / t.grad_accum)  # as tunelab.train.plan.Plan
    return t.max_steps or max(1, math.ceil(t.epochs * per_epoch))


def evals_of(cfg: RunConfig, steps: int, has_eval: bool) -> int:
    if not has_eval:
        return 0
    every = cfg.train.eval_every
    return (steps - 1) // every + 1 if every else 1


def runtime_rss() -> float:
    """This process's resident memory with the libraries a training run imports on its way (so they count)."""
    import accelerate  # noqa: F401
    import matplotlib.pyplot  # noqa: F401  (the run's report)
    import peft  # noqa: F401
    import psutil

    return float(psutil.Process().memory_info().rss)


def describe_throughput(source: str, seconds: float, tokens: int) -> str:
    return f"{source}: {seconds * 1000:.1f} ms per micro-batch ({tokens / max(seconds, 1e-9):,.0f} tokens/s)"


def flops_seconds(f: Flops, tflops: float, utilization: float) -> float:
    return (f.forward + f.backward) / (tflops * 1e12 * utilization)
