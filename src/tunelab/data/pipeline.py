"""From the `data:` config to trainable Examples: read -> format -> split/mix -> tokenize -> truncate.

Bad records stop the run with every problem listed (up to a limit) by file, line and field. What is left
out on purpose — too long (drop policy), truncated, no trainable token — is counted per dataset and
reported; if most examples end up with no trainable token the run fails with the likely cause.
Tokenized data is cached under a content hash of the data files, the tokenizer, the template and the
config fields that affect tokens, so a second run does not tokenize again.

Mixing: a dataset with weight w contributes round(w * n) examples per epoch (sampled without
replacement below 1, repeated above), after `eval_ratio` of each training dataset has been split off by
seed (so repeats never leak into eval).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tunelab import __version__
from tunelab.config import DataConfig, DatasetConfig, RunConfig
from tunelab.data.formats import FORMATS, FieldError, detect_format, rename_columns
from tunelab.data.hints import mapping_hint
from tunelab.data.records import SFT_RECORDS, Record
from tunelab.data.sources import MAX_RECORD_BYTES, ReadOptions, Row, read_rows
from tunelab.data.tokenize import Encoder, Example, TemplateError, chat_template_for, truncate
from tunelab.errors import DataError

MAX_LISTED_ERRORS = 10
T = TypeVar("T")
ENCODING_VERSION = "3"  # bump when tokenization changes, to invalidate caches (3: tool calls and tools)


@dataclass
class DatasetStats:
    path: str
    format: str
    records: int = 0
    train: int = 0
    eval: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    fully_masked: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)


@dataclass
class Prepared:
    train: list[Example]
    eval: list[Example]
    stats: list[DatasetStats]
    manifest: list[dict[str, Any]]
    cached: bool = False
    eval_tasks: list[str] = field(default_factory=list)  # the task (dataset name) of each eval item

    def eval_groups(self) -> dict[str, list[int]]:
        """Eval item indices by task, in first-seen order (one group when there is a single task)."""
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(self.eval_tasks or [""] * len(self.eval)):
            groups.setdefault(task, []).append(i)
        return groups

    def report(self) -> dict[str, Any]:
        out = []
        for s in self.stats:
            d = {k: v for k, v in asdict(s).items() if k != "lengths"}
            if s.lengths:
                arr = np.array(s.lengths)
                d["length"] = {"min": int(arr.min()), "mean": round(float(arr.mean()), 1),
                               "p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95)), "max": int(arr.max())}  # fmt: skip
            out.append(d)
        return {
            "datasets": out,
            "train_examples": len(self.train),
            "eval_examples": len(self.eval),
            "cached": self.cached,
        }


# --------------------------------------------------------------------------- records


def load_records(ds: DatasetConfig, max_record_bytes: int = MAX_RECORD_BYTES) -> tuple[str, list[tuple[Record, Row]]]:
    """All records of one dataset with their rows; every invalid row is reported at once (a record over
    `max_record_bytes`, data.max_record_bytes, stops the reading before it is parsed)."""
    rows = read_rows(ds.path, ds.split, max_record_bytes, ReadOptions.of(ds))
    fmt = ds.format
    out: list[tuple[Record, Row]] = []
    errors: list[str] = []
    n_errors, hint = 0, ""
    skip = set(ds.skip_records)
    for row in _limit(rows, ds.max_samples):
        if row.index in skip:
            continue
        data = row.data
        try:
            data = rename_columns(row.data, ds.columns)
            if fmt == "auto":
                fmt = detect_format(set(data)) or "auto"
                if fmt == "auto":
                    raise FieldError("", f"cannot detect the format from fields {', '.join(map(str, data))}; set "
                                     f"format: one of {', '.join(FORMATS)} (and columns: to map your field names)"
                                     + mapping_hint(None, data))  # fmt: skip
            out.append((FORMATS[fmt](data), row))
        except FieldError as e:
            n_errors += 1
            hint = hint or (mapping_hint(fmt, data) if "missing required field" in str(e) else "")
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(str(row.error(str(e), e.field or None)))
    if n_errors:
        more = f"\n  ... and {n_errors - len(errors)} more" if n_errors > len(errors) else ""
        head = errors[0] if n_errors == 1 else f"{n_errors} invalid records in {ds.path}:\n  " + "\n  ".join(errors)
        raise DataError(head + more + (f"\n  {hint[2:]}" if hint else ""))
    return fmt, out


def _limit(rows: Iterator[Row], n: int | None) -> Iterator[Row]:
    for i, row in enumerate(rows):
        if n is not None and i >= n:
            return
        yield row


def split_and_mix(
    per_dataset: list[list[T]], weights: list[float], eval_ratio: float, seed: int
) -> tuple[list[tuple[int, T]], list[tuple[int, T]]]:
    """(dataset index, item) pairs for train (weighted) and eval (split off first); an item is a record,
    often with its row."""
    rng = random.Random(seed)
    train, evals = [], []
    for d, (records, w) in enumerate(zip(per_dataset, weights)):
        order = list(range(len(records)))
        rng.shuffle(order)
        n_eval = round(len(order) * eval_ratio)
        evals += [(d, records[i]) for i in sorted(order[:n_eval])]
        keep = sorted(order[n_eval:])
        target = round(w * len(keep))
        picked = keep * (target // len(keep)) + rng.sample(keep, target % len(keep)) if keep else []
        train += [(d, records[i]) for i in picked]
    rng.shuffle(train)
    return train, evals


# --------------------------------------------------------------------------- tokens


def prepare(cfg: RunConfig, tokenizer: Any, use_cache: bool = True) -> Prepared:
    """The whole data pipeline for a run: what `validate`, `prepare` and `train` all call."""
    data = cfg.data
    if not data.train:
        raise DataError("no training data: add at least one dataset under data.train", where="config")
    manifest = [file_manifest(ds.path) for ds in (*data.train, *data.eval)]
    template = chat_template_for(tokenizer, cfg.model.chat_template)
    key = _cache_key(data, manifest, tokenizer, template)
    cache = _cache_dir(data) / f"{key}.npz"
    if use_cache and cache.is_file():
        return _load_cache(cache, manifest)

    encoder = Encoder(tokenizer, template, data.train_on_inputs)
    loaded = [load_records(ds, data.max_record_bytes) for ds in data.train]
    stats = [DatasetStats(ds.path, fmt, records=len(recs)) for ds, (fmt, recs) in zip(data.train, loaded)]
    for ds, (_, recs) in zip(data.train, loaded):
        _require_sft(ds, recs)
    per_dataset = [recs for _, recs in loaded]  # (record, row) pairs: rows name the line in errors
    train_pairs, eval_pairs = split_and_mix(per_dataset, [ds.weight for ds in data.train], data.eval_ratio, data.seed)
    for ds in data.eval:
        fmt, recs = load_records(ds, data.max_record_bytes)
        _require_sft(ds, recs)
        stats.append(DatasetStats(ds.path, fmt, records=len(recs)))
        eval_pairs += [(len(stats) - 1, r) for r in recs]
    train, _ = _encode_all(encoder, train_pairs, stats, data, "train")
    evals, sources = _encode_all(encoder, eval_pairs, stats, data, "eval")
    _check_masking(stats, data)
    prepared = Prepared(train, evals, stats, manifest, eval_tasks=task_names(data, sources))
    if use_cache:
        _save_cache(cache, prepared)
    return prepared


def _require_sft(ds: DatasetConfig, recs: list[tuple[Record, Row]]) -> None:
    for rec, row in recs[:1]:
        if not isinstance(rec, SFT_RECORDS):
            use = "method grpo" if type(rec).__name__ == "Prompt" else "preference methods"
            raise row.error(f"{type(rec).__name__} records (format {ds.format}) are for {use}, not "
                            "method sft; use a conversation/prompt_completion/text dataset")  # fmt: skip


def task_names(data: DataConfig, sources: list[int]) -> list[str]:
    """Task name per item from its dataset index (data.train first, then data.eval, as in `stats`)."""
    names = [ds.task_name() for ds in (*data.train, *data.eval)]
    return [names[d] for d in sources]


@contextmanager
def at_row(row: Row) -> Iterator[None]:
    """A chat template that cannot render a record (tools it ignores, a turn it changes) names the record."""
    try:
        yield
    except TemplateError as e:
        raise row.error(str(e), e.field) from None


def _encode_all(
    encoder: Encoder,
    pairs: list[tuple[int, tuple[Record, Row]]],
    stats: list[DatasetStats],
    data: DataConfig,
    split: str,
) -> tuple[list[Example], list[int]]:
    """Encoded examples that survive truncation and masking, and the dataset index of each."""
    out, sources = [], []
    for d, (rec, row) in pairs:
        s = stats[d]
        with at_row(row):
            ex = encoder.encode(rec)
        if len(ex.input_ids) > data.max_length:
            if data.truncation == "drop":
                s.dropped_too_long += 1
                continue
            s.truncated += 1
            ex = truncate(ex, data.max_length)
        if ex.n_trainable == 0:
            s.fully_masked += 1  # never trained on silently: counted, reported, and checked below
            continue
        setattr(s, split, getattr(s, split) + 1)
        s.tokens += len(ex.input_ids)
        s.trainable_tokens += ex.n_trainable
        s.lengths.append(len(ex.input_ids))
        out.append(ex)
        sources.append(d)
    return out, sources


def _check_masking(stats: list[DatasetStats], data: DataConfig) -> None:
    for s in stats:
        seen = s.train + s.eval + s.fully_masked
        if seen and s.fully_masked / seen > data.max_fully_masked:
            raise DataError(
                f"{s.fully_masked} of {seen} examples have no trainable token after tokenization. Likely causes: "
                f"the assistant replies were truncated away (max_length {data.max_length} is too small for the "
                "prompts), or the chat template does not render assistant turns as expected (try "
                "model.chat_template: fallback).",
                where=s.path,
            )


# --------------------------------------------------------------------------- manifest and cache


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_manifest(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(p)}:{sha256_file(f)}\n".encode())
        return {"path": str(p), "sha256": h.hexdigest(), "bytes": sum(f.stat().st_size for f in files)}
    return {"path": path, "sha256": None, "note": "hub dataset: not hashed"}


def _cache_dir(data: DataConfig) -> Path:
    base = data.cache_dir or os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab"
    return Path(base) / "tokenized"


def _cache_key(data: DataConfig, manifest: list[dict[str, Any]], tokenizer: Any, template: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([m["sha256"] or m["path"] for m in manifest]).encode())
    h.update(data.model_dump_json(exclude={"cache_dir"}).encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode() if getattr(tokenizer, "is_fast", False) else b"")
    h.update(template.encode())
    h.update(f"{__version__}/{ENCODING_VERSION}".encode())
    return h.hexdigest()[:32]


def _flatten(examples: list[Example]) -> dict[str, np.ndarray]:
    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    ids = np.array([t for e in examples for t in e.input_ids], dtype=np.int64)
    labels = np.array([t for e in examples for t in e.labels], dtype=np.int64)
    return {"lengths": lengths, "ids": ids, "labels": labels}


def _unflatten(lengths: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> list[Example]:
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [Example(ids[a:b].tolist(), labels[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]


def _save_cache(path: Path, p: Prepared) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {f"train_{k}": v for k, v in _flatten(p.train).items()}
    arrays |= {f"eval_{k}": v for k, v in _flatten(p.eval).items()}
    arrays["meta"] = np.array(json.dumps([asdict(s) for s in p.stats]))
    arrays["eval_tasks"] = np.array(json.dumps(p.eval_tasks))
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a reader never sees a half-written cache


def _load_cache(path: Path, manifest: list[dict[str, Any]]) -> Prepared:
    with np.load(path, allow_pickle=False) as z:
        train = _unflatten(z["train_lengths"], z["train_ids"], z["train_labels"])
        evals = _unflatten(z["eval_lengths"], z["eval_ids"], z["eval_labels"])
        stats = [DatasetStats(**s) for s in json.loads(str(z["meta"]))]
        tasks = json.loads(str(z["eval_tasks"]))
    return Prepared(train, evals, stats, manifest, cached=True, eval_tasks=tasks)
