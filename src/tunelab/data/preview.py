"""What `tunelab validate` and `tunelab prepare --debug` show: counts, problems, and tokens with their loss mask."""

from __future__ import annotations

from typing import Any

import numpy as np

from tunelab.config import RunConfig
from tunelab.data.heads import FORMAT_OF, ClassItem, prepare_heads, resolve_formats
from tunelab.data.pipeline import prepare
from tunelab.data.prepared import at_row, iter_records, load_records
from tunelab.data.prompts import prepare_prompts
from tunelab.data.records import SFT_RECORDS, Record
from tunelab.data.tokenize import IGNORE, Encoder, Example, chat_template_for

TRAINED_OPEN, TRAINED_CLOSE = "\u27e6", "\u27e7"  # ⟦ trained ⟧


def validate(cfg: RunConfig, tokenizer: Any, kind: str) -> dict[str, Any]:
    """Build the whole data pipeline of data `kind` (tunelab.methods: the method's) without training; a dict
    report of counts and problems."""
    if kind == "prompts":  # tokenized as the model sees them before it answers
        return {**prepare_prompts(cfg, tokenizer).report(), "kind": "prompts"}
    if kind in FORMAT_OF:  # labelled or tagged rows: label set and alignment
        return prepare_heads(resolve_formats(cfg, kind), tokenizer, kind).report() | {"kind": cfg.method.name}
    datasets = [*cfg.data.train, *cfg.data.eval]
    if all(isinstance(rec, SFT_RECORDS) for rec in _first_records(datasets, cfg.data.max_record_bytes)):
        return prepare(cfg, tokenizer).report() | {"kind": "sft"}  # each record read once, streamed
    # Preference data: every record parsed and each side tokenized; training them is a preference method's job.
    encoder = Encoder(tokenizer, chat_template_for(tokenizer, cfg.model.chat_template), cfg.data.train_on_inputs)
    out = []
    for ds in datasets:
        fmt, recs = load_records(ds, cfg.data.max_record_bytes)
        lengths, too_long, masked = [], 0, 0
        for rec, row in recs:
            with at_row(row):
                views = encoder.encode_views(rec)
            for _, ex in views:
                lengths.append(len(ex.input_ids))
                too_long += len(ex.input_ids) > cfg.data.max_length
                masked += ex.n_trainable == 0
        arr = np.array(lengths)
        out.append({"path": ds.path, "format": fmt, "records": len(recs), "sequences": len(lengths),
                    "longer_than_max_length": too_long, "fully_masked": masked,
                    "length": {"min": int(arr.min()), "mean": round(float(arr.mean()), 1), "max": int(arr.max())}})  # fmt: skip
    return {"kind": "preference", "datasets": out}


def _first_records(datasets: list[Any], max_record_bytes: int) -> list[Record]:
    """The first record of each dataset (the rest is not read: the pipeline reads it once)."""
    out = []
    for ds in datasets:
        for _, rec, _ in iter_records(ds.model_copy(update={"max_samples": 1}), max_record_bytes):
            out.append(rec)
    return out


def debug_examples(cfg: RunConfig, tokenizer: Any, n: int, kind: str) -> list[tuple[str, str, Example]]:
    """The first n records of the first training dataset as (source, view, Example)."""
    if kind in FORMAT_OF:
        return _head_examples(cfg, tokenizer, n, kind)
    encoder = Encoder(tokenizer, chat_template_for(tokenizer, cfg.model.chat_template), cfg.data.train_on_inputs)
    _, recs = load_records(cfg.data.train[0].model_copy(update={"max_samples": n}), cfg.data.max_record_bytes)
    out = []
    for rec, row in recs:
        where = f"{row.source}:{row.line}" if row.line else f"{row.source}[{row.index}]"
        with at_row(row):
            out += [(where, view, ex) for view, ex in encoder.encode_views(rec)]
    return out


def render_masked(tokenizer: Any, ex: Example) -> str:
    """The example's text with trained spans in ⟦ ⟧ (consecutive tokens grouped, decoded together)."""
    parts, group, trained = [], [], None
    for tid, lab in zip(ex.input_ids, ex.labels):
        t = lab != IGNORE
        if trained is not None and t != trained:
            parts.append(_wrap(tokenizer.decode(group), trained))
            group = []
        group.append(tid)
        trained = t
    if group:
        parts.append(_wrap(tokenizer.decode(group), bool(trained)))
    return "".join(parts)


def _wrap(text: str, trained: bool) -> str:
    return f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text


def token_table(tokenizer: Any, ex: Example) -> list[str]:
    """One line per token: position, id, the token as a Python literal, and its label (or '-' for none)."""
    lines = []
    for i, (tid, lab) in enumerate(zip(ex.input_ids, ex.labels)):
        piece = tokenizer.convert_ids_to_tokens(tid)
        lines.append(f"{i:5d} {tid:7d} {piece!r:24} {'-' if lab == IGNORE else lab}")
    return lines


def _head_examples(cfg: RunConfig, tokenizer: Any, n: int, kind: str) -> list[tuple[str, str, Example]]:
    """labelled: the tokens and the label (no token carries loss: the sequence does); tagged: each word's first
    token carries its tag id (the view lists the ids)."""
    prepared = prepare_heads(resolve_formats(cfg, kind), tokenizer, kind)
    pool: list[Any] = [*prepared.train, *prepared.eval]  # ClassItem / TagItem
    items = sorted(pool, key=lambda it: _file_order(it.where))[:n]
    out = []
    for it in items:
        if isinstance(it, ClassItem):
            out.append(
                (it.where, f"label {prepared.labels[it.label]!r}", Example(it.input_ids, [IGNORE] * len(it.input_ids)))
            )
        else:
            legend = ", ".join(f"{i}={name}" for i, name in enumerate(prepared.labels))
            out.append((it.where, f"tags ({legend})", Example(it.input_ids, it.labels)))
    return out


def _file_order(where: str) -> tuple[str, int]:
    """'file:12' / 'file#3' -> (file, 12): records in file order (the split shuffled them)."""
    for sep in (":", "#"):
        head, _, tail = where.rpartition(sep)
        if head and tail.isdigit():
            return head, int(tail)
    return where, 0
