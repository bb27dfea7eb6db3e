"""One training run, end to end: run directory -> data -> model -> baseline -> loop -> final/ -> evaluation.

The same code runs in one process and under `accelerate launch`; what the run directory holds is described in
tunelab.train.rundir. Full and freeze tuning load fp32 master weights even when bf16 compute is available (mixed
precision autocasts the matmuls); adapter modes keep the base in the configured dtype (peft keeps adapters fp32).
A method's facts (its data kind, its head, how it is built) come from its registry entry, tunelab.methods.METHODS.
`stages:` sequences are tunelab.stages, which calls `train_one` per stage.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RunConfig, asks_reward, dump_config, eval_settings
from tunelab.data.collate import pack
from tunelab.data.heads import resolve_formats
from tunelab.data.prepare import prepare_data
from tunelab.data.prepared import Joined
from tunelab.data.tokenize import chat_template_for
from tunelab.errors import TunelabError
from tunelab.eval.card import write_run_card
from tunelab.eval.card_text import setup_line
from tunelab.eval.lifecycle import after_training, before_training
from tunelab.methods import METHODS, build_method, implicit_reward
from tunelab.methods.teacher_data import prepare_teacher
from tunelab.models.heads import load_head_model, write_head_info
from tunelab.models.load import load_tokenizer
from tunelab.models.loader import load
from tunelab.models.tuning import (
    PROMPT_LEARNING_MODES,
    apply_tuning,
    check_head_tuning,
    describe_trainable,
    load_for_tuning,
)
from tunelab.planner import DataCounts, estimate
from tunelab.quality.card import CHECK_REPORT, leaked_eval_records, preflight, skip_records
from tunelab.scoring.rewards import check_sources
from tunelab.train import distributed, rundir
from tunelab.train.loop import Hooks, Job, Trainer
from tunelab.train.optim import configure_threads, resolve_precision
from tunelab.train.tracking import check_installed, tracked


def train_one(cfg: RunConfig, resume: bool = False, hooks: Hooks | None = None,
              config_path: str | Path | None = None) -> Path:  # fmt: skip
    """Train one run per `cfg` (no stages); returns its run directory. Raises TrainingInterrupted on Ctrl-C or
    SIGTERM after saving a checkpoint."""
    from accelerate.utils import set_seed

    spec = METHODS[cfg.method.name]
    check_installed(cfg)
    _check_rewards(cfg)  # before a run directory exists
    acc, run_dir, threads, setup = _start(cfg, config_path, resume)
    set_seed(cfg.train.seed)
    cfg = resolve_formats(cfg, spec.data)  # labelled/tagged data: format auto is saved as what was read
    tokenizer = load_tokenizer(cfg.model)
    asked = cfg  # saved as config.yaml; distill from completions trains on the teacher's replies instead
    cfg = _check_data(cfg, tokenizer, run_dir, acc, resume)  # before any model loads: a failed check costs seconds
    cfg = prepare_teacher(cfg, tokenizer, run_dir, acc)
    with acc.main_process_first():
        prepared = prepare_data(cfg, tokenizer, spec.data)
    _attach_chat_template(tokenizer, cfg, [s.format for s in prepared.stats])
    acc.print(_plan_line(cfg, prepared))
    labels = getattr(prepared, "labels", [])
    model = _load_model(cfg, tokenizer, labels, acc.print)
    if acc.is_main_process and not resume:
        _before_training(cfg, model, tokenizer, run_dir, acc.print)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_tuning(model, cfg.tuning, spec.head)
    acc.print(f"{describe_trainable(model)}; {acc.num_processes} process(es), {threads} torch threads each")
    method = build_method(cfg, model, Joined(prepared.train, prepared.eval), tokenizer.pad_token_id, tokenizer)
    items = _maybe_pack(cfg, method, prepared.train)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_files(run_dir, asked, prepared, resume, setup)
    acc.wait_for_everyone()
    job = Job(cfg, run_dir, acc, model, tokenizer, method, items, prepared.eval, getattr(prepared, "eval_tasks", []))
    trainer = Trainer(job, hooks)
    with tracked(acc, cfg, run_dir, config_path, resume, lambda: trainer.state.step):
        if resume:
            trainer.resume()
        if acc.is_main_process:
            rundir.mark_started(run_dir)
        trainer.run()
        if cfg.train.load_best_at_end:
            trainer.load_best()
        acc.print(f"saving the final model to {run_dir / 'final'} ...")
        started = time.perf_counter()
        trainer.save_final()
        acc.print(f"saved the final model ({time.perf_counter() - started:.1f} s); evaluating it")
        if acc.is_main_process:
            if spec.head:
                write_head_info(run_dir / "final", cfg.method.name, spec.head, labels)
            try:
                after_training(cfg, _trained_model(acc, trainer, run_dir), tokenizer, run_dir, acc.print, spec.head,
                               implicit_reward(cfg))  # fmt: skip
            finally:  # after the closing evaluation, whose comparison it shows (and even when that fails the run)
                write_run_card(run_dir)
    acc.wait_for_everyone()
    return run_dir


def _plan_line(cfg: RunConfig, prepared: Any) -> str:
    """The planner's one-line summary (no calibration: table throughput; memory from this process's RSS now)."""
    m = METHODS[cfg.method.name]
    if m.data != "sft" or not prepared.train or not hasattr(prepared.train[0], "input_ids"):
        return "plan: not estimated for this method's data (`tunelab plan` covers sft-style data)"
    train = [len(x.input_ids) for x in prepared.train]
    labelled = sum(x.n_trainable for x in prepared.train)
    counts = DataCounts.from_lengths(train, [len(x.input_ids) for x in prepared.eval], labelled)
    try:
        return estimate(cfg, counts).summary()
    except Exception as e:  # the plan informs; it never stops a run (e.g. an architecture it cannot build on meta)
        return f"plan: not estimated ({type(e).__name__}: {str(e)[:200]})"


def _start(cfg: RunConfig, config_path: str | Path | None, resume: bool) -> tuple[Any, Path, int, dict[str, Any]]:
    """(accelerator, run directory, torch threads, the distributed setup): the run directory is chosen by the main
    process and shared; a setup that differs from what the launcher asked for is refused first."""
    from accelerate.utils import broadcast_object_list

    threads = configure_threads(cfg.train.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    asked = distributed.requested()
    # no log_with: trackers need the run directory, chosen below (see tunelab.train.tracking)
    acc = distributed.accelerator(resolve_precision(cfg.train.precision), asked)
    distributed.check(acc, asked, cfg)
    setup = distributed.describe(acc, cfg, asked)
    holder = [rundir.choose_run_dir(cfg, config_path, resume) if acc.is_main_process else None]
    run_dir = Path(str(broadcast_object_list(holder)[0] if acc.num_processes > 1 else holder[0]))
    if acc.is_main_process and not resume and rundir.mark_starting(run_dir):
        acc.print(f"{run_dir}: an earlier attempt stopped before training began; starting it again there")
    acc.project_configuration.set_directories(str(run_dir))
    if cfg.data.packing and cfg.tuning.mode in PROMPT_LEARNING_MODES:
        raise TunelabError(f"data.packing: not supported with tuning.mode {cfg.tuning.mode} (virtual tokens)")
    if setup["type"] != "NO":
        acc.print(f"distributed: {setup_line(setup)}")
    launcher_mp = asked.mixed_precision
    if launcher_mp and launcher_mp != setup["mixed_precision"]:
        acc.print(f"note: the launcher's mixed_precision {launcher_mp} is not used: train.precision "
                  f"{cfg.train.precision} gives {setup['mixed_precision']}")  # fmt: skip
    return acc, run_dir, threads, setup


def _check_rewards(cfg: RunConfig) -> None:
    """Reward sources (the reward metric's, grpo's) fail now, before the model loads, not after training."""
    if asks_reward(cfg):
        check_sources(eval_settings(cfg).rewards)
    if cfg.method.name == "grpo":
        check_sources(cfg.method.grpo.rewards)


def _load_model(cfg: RunConfig, tokenizer: Any, labels: list[str], log: Any) -> Any:
    head = METHODS[cfg.method.name].head
    if head is None:
        return load_for_tuning(cfg.model, cfg.tuning, dtype=_load_dtype(cfg))
    model = load_head_model(cfg.model, head, labels, tokenizer.pad_token_id, _load_dtype(cfg), log)
    check_head_tuning(model, cfg.tuning.mode, head)  # before the baseline evaluation, not after it
    return model


def _maybe_pack(cfg: RunConfig, method: Any, items: Sequence[Any]) -> Sequence[Any]:
    if not cfg.data.packing:
        return items
    if not method.supports_packing:
        raise TunelabError(f"data.packing: method {cfg.method.name} does not support packing")
    shuffled = list(items)
    random.Random(cfg.train.seed).shuffle(shuffled)  # first-fit packs in order: mix lengths first
    return pack(shuffled, cfg.data.max_length)


def _check_data(cfg: RunConfig, tokenizer: Any, run_dir: Path, acc: Any, resume: bool) -> RunConfig:
    """The data pre-flight check (data.check), on the main process, before any model loads; errors stop the run.
    With data.check.leakage: drop, every process goes on with the leaked eval records left out (read back from
    the saved report, which a resumed run reuses)."""
    if cfg.data.check is None:
        return cfg
    saved = run_dir / CHECK_REPORT
    with acc.main_process_first():
        if acc.is_main_process and not (resume and saved.is_file()):
            report = preflight(cfg.data.train, [*cfg.data.eval, *cfg.eval.data], options=cfg.data.check,
                               tokenizer=tokenizer, run_dir=run_dir, max_record_bytes=cfg.data.max_record_bytes)  # fmt: skip
            acc.print(
                f"data check: {len(report.by_severity('warning'))} warning(s); card in {run_dir / 'data_card.md'}"
            )
    if cfg.data.check.leakage != "drop":
        return cfg
    left_out = leaked_eval_records(saved)
    if left_out:
        n = sum(len(v) for v in left_out.values())
        acc.print(f"data check: {n} leaked eval record(s) left out (data.check.leakage: drop; listed in data_card.md)")
    return skip_records(cfg, left_out)


def _before_training(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, log: Any) -> None:
    """The base model's evaluation (before any adapter exists)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    before_training(cfg, model, tokenizer, run_dir, log, METHODS[cfg.method.name].head, implicit_reward(cfg))


def _load_dtype(cfg: RunConfig) -> torch.dtype | None:
    if cfg.tuning.mode in ("full", "freeze") and cfg.model.dtype == "auto":
        return torch.float32
    return None


def _attach_chat_template(tokenizer: Any, cfg: RunConfig, formats: list[str]) -> None:
    """final/ carries the template the data was rendered with, so chat/serving render prompts the same way."""
    plain = ("text", "labelled", "token_tags")  # raw text: no template involved
    if cfg.model.chat_template or (tokenizer.chat_template is None and any(f not in plain for f in formats)):
        tokenizer.chat_template = chat_template_for(tokenizer, cfg.model.chat_template)


def _trained_model(acc: Any, trainer: Trainer, run_dir: Path) -> Any:
    """The model the closing evaluation runs on (main process only): the trained module, or where the weights are
    spread over the processes (FSDP, DeepSpeed) final/ loaded whole, since a forward pass of a sharded module
    needs every process."""
    if not distributed.gathers_final(acc):
        return distributed.unwrap(acc, trainer.module).model
    with distributed.one_process_loading(acc):
        model, _ = load(run_dir)
    return model.to(acc.device)


def _write_run_files(run_dir: Path, cfg: RunConfig, prepared: Any, resume: bool, setup: dict[str, Any]) -> None:
    text = dump_config(cfg)
    saved = run_dir / "config.yaml"
    if resume and saved.is_file() and saved.read_text() != text:
        print(f"warning: the config differs from the one {run_dir} started with; continuing with the new one")
        (run_dir / "config.resumed.yaml").write_text(text)
    else:
        saved.write_text(text)
    counts = {st.path: {"records": st.records, "train": st.train, "eval": st.eval} for st in prepared.stats}
    rundir.write_json(run_dir / "data_manifest.json", [{**m, **counts.get(m["path"], {})} for m in prepared.manifest])
    rundir.write_json(run_dir / "data_report.json", prepared.report())
    env = rundir.environment() | {"distributed": setup}
    rundir.write_json(run_dir / ("environment.resumed.json" if resume else "environment.json"), env)
