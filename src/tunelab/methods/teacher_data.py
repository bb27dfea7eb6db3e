"""Distillation from a teacher's text (method.distill.mode: completions): the teacher answers the training
prompts, the student learns the answers with plain SFT. Works across tokenizers and with remote teachers.

The teacher is a local model (a preset, folder, hub id or tunelab run directory; batched generation from
tunelab.models.generate, with its own chat template) or any OpenAI-compatible endpoint (the official
`openai` client: timeout, retries with backoff, `concurrency` requests in flight). Conversations go to
/chat/completions; plain prompt/completion prompts (not chats) to /completions.

Prompts are read as grpo reads them (tunelab.data.prompts.prompt_of): prompt-only rows (`format: prompt`, a
string is one user turn), or the prompt side of conversations, prompt/completion, preference and kto records,
whose existing reply is replaced. In a multi-turn conversation the teacher writes the final reply; earlier
assistant turns are kept as context with weight 0, so only the teacher's text trains.
Every written row carries `_teacher` (model, endpoint, generation settings) and `_source` (file:line);
replies cut at max_new_tokens carry `_truncated`. A prompt the teacher did not answer (after retries) is
never dropped silently: it goes to `<out>.failed.jsonl` with the error and is counted, and more failures
than `max_failed` allows stop the run. Empty replies are kept (that is what the teacher said) and counted.

Two entry points: `tunelab data distill` (a file in, a file out) and, inside `tunelab train`,
`prepare_teacher`, which writes RUN/teacher/ (completions, failures, report.json) before anything else
and trains on it; a rerun or --resume with the same teacher, settings and inputs reuses those files (unless that
attempt stopped on failures: then the teacher is asked again).
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunelab.config import DatasetConfig, ModelConfig, RunConfig, TeacherGeneration
from tunelab.console import progress
from tunelab.data.pipeline import load_records
from tunelab.data.prompts import PromptSpec, prompt_of
from tunelab.data.records import Message
from tunelab.data.sources import MAX_RECORD_BYTES
from tunelab.endpoint import Endpoint, api_key, chat, complete
from tunelab.errors import DataError, TunelabError

REPORT = "report.json"
MAX_LISTED_ERRORS = 20


@dataclass(frozen=True)
class TeacherPrompt:
    prompt: PromptSpec
    source: str  # file:line (or file[record])


@dataclass(frozen=True)
class Reply:
    text: str | None  # None: the request failed
    error: str | None = None
    truncated: bool = False


# --------------------------------------------------------------------------- prompts


def read_prompts(ds: DatasetConfig, max_record_bytes: int = MAX_RECORD_BYTES) -> list[TeacherPrompt]:
    """The prompt of every record (tunelab.data.prompts.prompt_of); records without one are listed with their
    file and line, as invalid records are by the pipeline."""
    _, records = load_records(ds, max_record_bytes)
    out: list[TeacherPrompt] = []
    errors: list[str] = []
    for rec, row in records:
        prompt = prompt_of(rec)
        where = f"{row.source}:{row.line}" if row.line else f"{row.source}[{row.index}]"
        if prompt is None:
            errors.append(str(row.error(f"a {type(rec).__name__} record has no prompt for the teacher to answer (use "
                                        "prompt rows, conversations, prompt/completion, preference or kto data)")))  # fmt: skip
        else:
            out.append(TeacherPrompt(prompt, where))
    if errors:
        more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
        raise DataError(f"{len(errors)} record(s) without a prompt in {ds.path}:\n  "
                        + "\n  ".join(errors[:MAX_LISTED_ERRORS]) + more)  # fmt: skip
    return out


def _chat(prompt: tuple[Message, ...]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in prompt]


# --------------------------------------------------------------------------- teachers


def complete_local(model: Any, tokenizer: Any, prompts: Sequence[PromptSpec], gen: TeacherGeneration) -> list[Reply]:
    """Batched generation with the teacher's own chat template (tunelab.models.generate)."""
    from tunelab.models.generate import DecodingConfig, generate_ids

    decoding = DecodingConfig(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                              seed=gen.seed, batch_size=gen.batch_size)  # fmt: skip
    as_input = [p if isinstance(p, str) else _chat(p) for p in prompts]
    ids = generate_ids(model, tokenizer, as_input, decoding)
    # generate_ids cuts at the first EOS: a reply as long as the budget never produced one
    return [Reply(tokenizer.decode(r, skip_special_tokens=True), truncated=len(r) >= gen.max_new_tokens) for r in ids]


def complete_endpoint(model: str, prompts: Sequence[PromptSpec], gen: TeacherGeneration) -> list[Reply]:
    """One request per prompt, `concurrency` at a time; a request that still fails after the client's
    retries becomes a Reply with its error (never an exception, never dropped)."""
    key = api_key(gen.api_key_env, "method.distill.generation")  # local servers need no key
    client = Endpoint(gen.base_url, key, gen.timeout, gen.max_retries).client()
    kwargs: dict[str, Any] = dict(max_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                                  seed=gen.seed)  # fmt: skip

    def one(prompt: PromptSpec) -> Reply:
        if isinstance(prompt, str):
            r = complete(client, model, prompt, **kwargs)
        else:
            r = chat(client, model, _chat(prompt), **kwargs)
        if r.error is not None:
            return Reply(None, r.error)
        if r.text is None:
            return Reply(None, "the endpoint returned no text")
        return Reply(r.text, truncated=r.finish_reason == "length")

    with ThreadPoolExecutor(gen.concurrency) as pool:
        return list(progress(pool.map(one, prompts), total=len(prompts), desc="teacher", unit="prompt"))


def settings(teacher: str, gen: TeacherGeneration) -> dict[str, Any]:
    """What each written row records in `_teacher`: who answered and how."""
    out = {"model": teacher, "base_url": gen.base_url}
    return out | gen.model_dump(include={"max_new_tokens", "temperature", "top_p", "seed"})


class Teacher:
    """A teacher that answers prompts: an endpoint, or a local model loaded once (freed by close())."""

    def __init__(self, name: str, gen: TeacherGeneration, student: ModelConfig | None = None,
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        self.name, self.gen, self.model, self.tokenizer = name, gen, None, None
        if gen.base_url is None:
            from tunelab.methods.distill import teacher_model

            self.model, self.tokenizer = teacher_model(name, student or ModelConfig())
            self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()

    def answer(self, prompts: Sequence[PromptSpec]) -> list[Reply]:
        if self.model is None:
            return complete_endpoint(self.name, prompts, self.gen)
        return complete_local(self.model, self.tokenizer, prompts, self.gen)

    def close(self) -> None:
        self.model = self.tokenizer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- files


def distill_dataset(
    ds: DatasetConfig, teacher: Teacher, out: str | Path, max_record_bytes: int = MAX_RECORD_BYTES
) -> dict[str, Any]:
    """Answer every prompt of `ds`; write the rows to `out` (JSONL) and failures to `<out>.failed.jsonl`.
    Returns the counts (prompts, written, failed, empty, truncated) and the files."""
    out = Path(out)
    if out.suffix.lower() not in (".jsonl", ".ndjson"):
        raise TunelabError(f"{out}: teacher completions are written as JSON lines; use a .jsonl file name")
    prompts = read_prompts(ds, max_record_bytes)
    replies = teacher.answer([p.prompt for p in prompts])
    meta = settings(teacher.name, teacher.gen)
    rows = [_row(p, r, meta) for p, r in zip(prompts, replies) if r.text is not None]
    failed = [{"_source": p.source, "prompt": p.prompt if isinstance(p.prompt, str) else _chat(p.prompt),
               "error": r.error} for p, r in zip(prompts, replies) if r.text is None]  # fmt: skip
    _write_jsonl(rows, out)
    failed_path = out.with_suffix(".failed.jsonl")
    if failed:
        _write_jsonl(failed, failed_path)
    elif failed_path.exists():
        failed_path.unlink()  # from an earlier attempt: stale
    return {"input": ds.path, "output": str(out), "prompts": len(prompts), "written": len(rows),
            "failed": len(failed), "empty": sum(1 for r in replies if r.text == ""),
            "truncated": sum(1 for r in replies if r.text is not None and r.truncated),
            "failed_file": str(failed_path) if failed else None,
            "first_errors": [f"{f['_source']}: {f['error']}" for f in failed[:3]]}  # fmt: skip


def _row(p: TeacherPrompt, r: Reply, meta: dict[str, Any]) -> dict[str, Any]:
    if isinstance(p.prompt, str):
        row: dict[str, Any] = {"prompt": p.prompt, "completion": r.text}
    else:  # earlier assistant turns stay as context: weight 0, only the teacher's reply trains
        msgs = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in _chat(p.prompt)]
        row = {"messages": [*msgs, {"role": "assistant", "content": r.text}]}
    row |= {"_teacher": meta, "_source": p.source}
    return row | ({"_truncated": True} if r.truncated else {})


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp.replace(path)


def _within(reports: list[dict[str, Any]], max_failed: float) -> bool:
    failed = sum(r["failed"] for r in reports)
    return not failed or failed <= max_failed * sum(r["prompts"] for r in reports)


def check_failures(reports: list[dict[str, Any]], max_failed: float, hint: str) -> None:
    """Stop when more prompts than `max_failed` (a fraction) got no reply."""
    prompts = sum(r["prompts"] for r in reports)
    failed = sum(r["failed"] for r in reports)
    if not _within(reports, max_failed):
        first = [e for r in reports for e in r["first_errors"]][:3]
        files = ", ".join(r["failed_file"] for r in reports if r["failed_file"])
        raise TunelabError(
            f"teacher: {failed} of {prompts} prompts got no reply ({failed / prompts:.1%} > max_failed "
            f"{max_failed:.1%}); first: {'; '.join(first)}. Failed prompts are in {files}. Fix the endpoint and "
            f"rerun, or {hint} to train on the answered ones."
        )


def summary(report: dict[str, Any]) -> str:
    extra = f", {report['failed']} failed -> {report['failed_file']}" if report["failed"] else ", 0 failed"
    return (f"{report['output']}: {report['written']} of {report['prompts']} prompts answered{extra}, "
            f"{report['empty']} empty, {report['truncated']} cut at max_new_tokens")  # fmt: skip


# --------------------------------------------------------------------------- inside a training run


def check_teacher(cfg: RunConfig, tokenizer: Any) -> None:
    """Logits mode: the teacher's vocabulary must be the student's; checked first (tokenizers only: seconds, before
    the data check, data work and the baseline eval)."""
    m = cfg.method
    if m.name == "distill" and m.distill.mode == "logits":
        from tunelab.methods.distill import check_vocab, teacher_tokenizer

        check_vocab(
            tokenizer, teacher_tokenizer(str(m.distill.teacher)), cfg.model.name_or_path, str(m.distill.teacher)
        )


def prepare_teacher(cfg: RunConfig, tokenizer: Any, run_dir: Path, acc: Any) -> RunConfig:
    """Before data preparation: completions mode has the teacher write RUN/teacher/ and returns the config whose
    data.train is that output (data.eval and eval.data stay the user's own references); other methods and logits
    mode (checked by `check_teacher`) keep `cfg`."""
    m = cfg.method
    if m.name != "distill" or m.distill.mode == "logits":
        return cfg
    folder = run_dir / "teacher"
    if acc.is_main_process:
        write_teacher_data(cfg, folder, acc.device, acc.print)
    acc.wait_for_everyone()
    outputs = json.loads((folder / REPORT).read_text())["datasets"]
    train = [ds.model_copy(update={"path": r["output"], "format": "auto", "columns": None, "max_samples": None})
             for ds, r in zip(cfg.data.train, outputs)]  # fmt: skip
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": train})})


def write_teacher_data(cfg: RunConfig, folder: Path, device: Any = None, log: Any = print) -> None:
    d, gen = cfg.method.distill, cfg.method.distill.generation
    key = _key(cfg)
    report_path = folder / REPORT
    if report_path.is_file():
        old = json.loads(report_path.read_text())
        same = old.get("key") == key and all(Path(r["output"]).is_file() for r in old["datasets"])
        if same and _within(old["datasets"], gen.max_failed):
            log(f"teacher: reusing {folder} (same teacher, settings and inputs)")
            return
        if same:  # the earlier attempt stopped on failures: ask again (the endpoint may be back)
            log(f"teacher: {folder} has too many failed prompts from an earlier attempt; asking the teacher again")
    if not cfg.data.train:
        raise DataError("no training data: add at least one dataset (the prompts) under data.train", where="config")
    where = gen.base_url or "a local model"
    log(f"teacher: {d.teacher} ({where}) answers the prompts of {len(cfg.data.train)} dataset(s)")
    teacher = Teacher(str(d.teacher), gen, cfg.model, device)
    try:
        reports = []
        for i, ds in enumerate(cfg.data.train):
            name = "completions.jsonl" if len(cfg.data.train) == 1 else f"completions-{i}.jsonl"
            reports.append(distill_dataset(ds, teacher, folder / name, cfg.data.max_record_bytes))
            log("teacher: " + summary(reports[-1]))
    finally:
        teacher.close()
    report_path.write_text(json.dumps({"key": key, "teacher": settings(str(d.teacher), gen), "datasets": reports},
                                      indent=1) + "\n")  # fmt: skip
    check_failures(reports, gen.max_failed, "raise method.distill.generation.max_failed")


def _key(cfg: RunConfig) -> str:
    """What the generated data depends on: teacher, generation settings and the prompt files' contents."""
    from tunelab.data.pipeline import file_manifest

    gen = cfg.method.distill.generation.model_dump(exclude={"concurrency", "timeout", "max_retries", "max_failed"})
    parts = {"teacher": cfg.method.distill.teacher, "gen": gen,
             "data": [ds.model_dump(mode="json") | {"sha256": file_manifest(ds.path)["sha256"]} for ds in cfg.data.train]}  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
