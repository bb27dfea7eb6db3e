"""The Python entry points: `train(cfg) -> run dir` and `generate(run_or_model, ...) -> text`.

The CLI is a thin veneer over these. `train` works the same in one process and under
`accelerate launch`; what the run directory holds is described in tunelab.train.rundir.
Full and freeze tuning load fp32 master weights even when bf16 compute is available (mixed precision
autocasts the matmuls); adapter modes keep the base in the configured dtype (peft keeps adapters fp32).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ModelConfig, RunConfig, dump_config, load_config
from tunelab.errors import TunelabError
from tunelab.train.loop import Hooks, Job, Trainer, TrainingInterrupted

__all__ = ["Hooks", "TrainingInterrupted", "generate", "load_generator", "stream", "train"]


def train(
    cfg: RunConfig, resume: bool = False, hooks: Hooks | None = None, config_path: str | Path | None = None
) -> Path:
    """Train per `cfg`; returns the run directory (with final/). Raises TrainingInterrupted on Ctrl-C or SIGTERM.
    With `stages:`, runs them in order (tunelab.stages) and returns the last stage's run directory."""
    if cfg.stages:
        from tunelab.stages import run_stages

        return run_stages(cfg, config_path, resume)[-1]
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed

    from tunelab.data.collate import pack
    from tunelab.data.heads import resolve_formats
    from tunelab.methods import build_method, prepare_data
    from tunelab.methods.teacher_data import prepare_teacher
    from tunelab.models.heads import HEAD_TASK, load_head_model, write_head_info
    from tunelab.models.load import load_tokenizer
    from tunelab.models.tuning import (
        PROMPT_LEARNING_MODES,
        apply_tuning,
        check_head_tuning,
        describe_trainable,
        load_for_tuning,
    )
    from tunelab.train import rundir
    from tunelab.train.optim import configure_threads, resolve_precision
    from tunelab.train.tracking import check_installed, tracked

    check_installed(cfg)
    threads = configure_threads(cfg.train.threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    acc = Accelerator(  # no log_with: trackers need the run directory, chosen below (see tunelab.train.tracking)
        mixed_precision=resolve_precision(cfg.train.precision),
        cpu=not torch.cuda.is_available(),  # lets torchrun-started workers on a CPU machine join as MULTI_CPU (gloo)
    )
    if acc.distributed_type.value == "DEEPSPEED" and cfg.train.grad_accum > 1:
        raise TunelabError(
            "train.grad_accum: DeepSpeed steps on every backward here; set grad_accum: 1 (raise batch_size instead)"
        )
    holder = [rundir.choose_run_dir(cfg, config_path, resume) if acc.is_main_process else None]
    run_dir = Path(broadcast_object_list(holder)[0] if acc.num_processes > 1 else holder[0])
    if acc.is_main_process and not resume and rundir.mark_starting(run_dir):
        acc.print(f"{run_dir}: an earlier attempt stopped before training began; starting it again there")
    acc.project_configuration.set_directories(str(run_dir))
    if cfg.data.packing and cfg.tuning.mode in PROMPT_LEARNING_MODES:
        raise TunelabError(f"data.packing: not supported with tuning.mode {cfg.tuning.mode} (virtual tokens)")

    set_seed(cfg.train.seed)
    cfg = resolve_formats(cfg)  # classify/ner: format auto means labelled/token_tags, saved as such
    tokenizer = load_tokenizer(cfg.model)
    asked = cfg  # saved as config.yaml; distill from completions trains on the teacher's replies instead
    cfg = prepare_teacher(cfg, tokenizer, run_dir, acc)
    with acc.main_process_first():
        prepared = prepare_data(cfg, tokenizer)  # sft examples, preference pairs / unpaired items, head items
    _attach_chat_template(tokenizer, cfg, [s.format for s in prepared.stats])
    head, labels = HEAD_TASK.get(cfg.method.name), getattr(prepared, "labels", [])
    if head:  # classify / ner / reward: a task head instead of the LM head
        model = load_head_model(cfg.model, cfg.method.name, labels, tokenizer.pad_token_id, _load_dtype(cfg), acc.print)
        check_head_tuning(model, cfg.tuning.mode, head)  # before the baseline evaluation, not after it
    else:
        model = load_for_tuning(cfg.model, cfg.tuning, dtype=_load_dtype(cfg))
    if acc.is_main_process and not resume:
        _before_training(cfg, model, tokenizer, run_dir, acc.print)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_tuning(model, cfg.tuning, head)
    acc.print(f"{describe_trainable(model)}; {acc.num_processes} process(es), {threads} torch threads each")

    method = build_method(cfg, model, prepared.train + prepared.eval, tokenizer.pad_token_id, tokenizer)
    items: list[Any] = prepared.train
    if cfg.data.packing:
        if not method.supports_packing:
            raise TunelabError(f"data.packing: method {cfg.method.name} does not support packing")
        shuffled = list(items)
        random.Random(cfg.train.seed).shuffle(shuffled)  # first-fit packs in order: mix lengths first
        items = pack(shuffled, cfg.data.max_length)
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_files(run_dir, asked, prepared, resume)
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
        trainer.save_final()
        if acc.is_main_process:
            from tunelab.eval.lifecycle import after_training

            if head:
                write_head_info(run_dir / "final", cfg.method.name, labels)

            from tunelab.export.card import write_run_card

            try:
                after_training(cfg, acc.unwrap_model(trainer.module).model, tokenizer, run_dir, acc.print)
            finally:  # after the closing evaluation, whose comparison it shows (and even when that fails the run)
                write_run_card(run_dir)
    acc.wait_for_everyone()
    return run_dir


def _before_training(cfg: RunConfig, model: Any, tokenizer: Any, run_dir: Path, log: Any) -> None:
    """Data pre-flight check, then the base model's evaluation (before any adapter exists)."""
    from tunelab.eval.lifecycle import before_training
    from tunelab.quality.card import preflight

    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.check is not None:
        report = preflight(cfg.data.train, [*cfg.data.eval, *cfg.eval.data], options=cfg.data.check,
                           tokenizer=tokenizer, run_dir=run_dir, max_record_bytes=cfg.data.max_record_bytes)  # fmt: skip
        log(f"data check: {len(report.by_severity('warning'))} warning(s); card in {run_dir / 'data_card.md'}")
    before_training(cfg, model, tokenizer, run_dir, log)


def _load_dtype(cfg: RunConfig) -> torch.dtype | None:
    if cfg.tuning.mode in ("full", "freeze") and cfg.model.dtype == "auto":
        return torch.float32
    return None


def _attach_chat_template(tokenizer: Any, cfg: RunConfig, formats: list[str]) -> None:
    """final/ carries the template the data was rendered with, so chat/serving render prompts the same way."""
    from tunelab.data.tokenize import chat_template_for

    plain = ("text", "labelled", "token_tags")  # raw text: no template involved
    if cfg.model.chat_template or (tokenizer.chat_template is None and any(f not in plain for f in formats)):
        tokenizer.chat_template = chat_template_for(tokenizer, cfg.model.chat_template)


def _write_run_files(run_dir: Path, cfg: RunConfig, prepared: Any, resume: bool) -> None:
    from tunelab.train.rundir import environment, write_json

    text = dump_config(cfg)
    saved = run_dir / "config.yaml"
    if resume and saved.is_file() and saved.read_text() != text:
        print(f"warning: the config differs from the one {run_dir} started with; continuing with the new one")
        (run_dir / "config.resumed.yaml").write_text(text)
    else:
        saved.write_text(text)
    counts = {st.path: {"records": st.records, "train": st.train, "eval": st.eval} for st in prepared.stats}
    write_json(run_dir / "data_manifest.json", [{**m, **counts.get(m["path"], {})} for m in prepared.manifest])
    write_json(run_dir / "data_report.json", prepared.report())
    write_json(run_dir / ("environment.resumed.json" if resume else "environment.json"), environment())


# ----------------------------------------------------------------------------------------- generation


def load_generator(run_or_model: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a run directory, a preset name or a model folder; eval mode."""
    from tunelab.models.heads import refuse_head
    from tunelab.models.load import is_run_dir, load_model, load_run, load_tokenizer

    refuse_head(run_or_model, "generate")
    if is_run_dir(run_or_model):
        model, tok = load_run(run_or_model)
    else:
        mcfg = ModelConfig(name_or_path=str(run_or_model))
        model, tok = load_model(mcfg), load_tokenizer(mcfg)
    return model.eval(), tok


def _inputs(tok: Any, prompt: str | None, messages: list[dict[str, str]] | None, chat: bool | None) -> Any:
    """Messages, or a prompt as one user turn when the tokenizer has a chat template (unless chat=False);
    otherwise the raw prompt with the tokenizer's own special tokens (BOS), as in pretraining."""
    if messages is None and prompt is None:
        raise TunelabError("generate: give a prompt or messages")
    use_chat = messages is not None or (chat is not False and tok.chat_template is not None)
    if chat and tok.chat_template is None:
        raise TunelabError("generate: this model's tokenizer has no chat template; use a plain prompt")
    if use_chat:
        text = tok.apply_chat_template(
            messages or [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tok(text, add_special_tokens=False, return_tensors="pt")
    return tok(prompt, return_tensors="pt")


def _gen_kwargs(model: Any, tok: Any, max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tok.eos_token_id
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, do_sample=temperature > 0)
    kw["pad_token_id"] = (
        tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    )
    if temperature > 0:
        kw.update(temperature=temperature, top_p=top_p)
    else:  # greedy: clear sampling defaults a checkpoint's generation_config may carry
        kw.update(temperature=None, top_p=None, top_k=None)
    return kw


def generate(
    run_or_model: str | Path | tuple[Any, Any],
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat: bool | None = None,
) -> str:
    """The model's continuation (new tokens only, special tokens skipped); greedy unless temperature > 0."""
    model, tok = run_or_model if isinstance(run_or_model, tuple) else load_generator(run_or_model)
    enc = _inputs(tok, prompt, messages, chat).to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, **_gen_kwargs(model, tok, max_new_tokens, temperature, top_p))
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def stream(
    model: Any, tok: Any, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0
) -> Iterator[str]:
    """Yield text pieces as they are generated (chat template applied), stopping at EOS."""
    import threading

    from transformers import TextIteratorStreamer

    enc = _inputs(tok, None, messages, True).to(model.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = {**enc, **_gen_kwargs(model, tok, max_new_tokens, temperature, 1.0), "streamer": streamer}
    worker = threading.Thread(target=lambda: model.generate(**kwargs), daemon=True)
    worker.start()
    yield from streamer
    worker.join()


def train_from_file(config: str | Path, overrides: list[str] | tuple[str, ...] = (), resume: bool = False) -> Path:
    return train(load_config(config, overrides), resume=resume, config_path=config)
