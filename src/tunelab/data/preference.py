"""Preference data: Preference / UnpairedPreference records -> tokenized items for dpo, simpo, orpo, kto, reward.

Tokenization goes through the one `Encoder` path: chosen and rejected are each rendered as the whole
conversation (prompt + reply), so both share the prompt tokens exactly. Only the final reply carries
labels: assistant turns inside a multi-turn prompt get weight 0 (they are context, not the answer
being compared), and `train_on_inputs` is ignored (a preference compares replies, never prompts).

A pair whose chosen or rejected reply has no labelled token left after truncation is dropped and
counted (`fully_masked`), like the SFT pipeline does. Over-long sequences (truncation: truncate) keep
the END of the prompt (the question is usually last) and then cut the reply's end: the prompt keeps
what the reply leaves free but at least max_length // 2 tokens (TRL's keep_end prompt truncation);
a leading BOS is kept. Chosen and rejected share the prompt, so they keep the same prompt tokens
unless their reply lengths differ enough to change the budget.

`collate_pairs` stacks all chosen rows first, then all rejected rows, into one right-padded batch, so
one forward pass serves both (row i and row i + n are a pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from tunelab.config import DataConfig, RunConfig
from tunelab.data.collate import collate
from tunelab.data.pipeline import (
    DatasetStats,
    Prepared,
    at_row,
    file_manifest,
    load_records,
    split_and_mix,
    task_names,
)
from tunelab.data.records import Conversation, Message, Preference, Record, UnpairedPreference
from tunelab.data.sources import Row
from tunelab.data.tokenize import IGNORE, Encoder, Example, chat_template_for, truncate
from tunelab.errors import DataError


@dataclass
class PairItem:
    chosen: Example
    rejected: Example
    ref_logps: tuple[float, float] | None = None  # precomputed reference (chosen, rejected) log-probs

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass
class UnpairedItem:
    example: Example
    label: bool  # True = desirable (KTO's reference runs live: its KL rows depend on the batch)

    @property
    def length(self) -> int:
        return len(self.example.input_ids)

    @property
    def prompt_len(self) -> int:
        """Tokens before the first labelled one: the prompt, for building mismatched (KL) pairs."""
        return next(i for i, x in enumerate(self.example.labels) if x != IGNORE)


def _context(prompt: tuple[Message, ...]) -> tuple[Message, ...]:
    return tuple(replace(m, weight=0) if m.role == "assistant" else m for m in prompt)


def _conv(prompt: tuple[Message, ...], reply: tuple[Message, ...], tools: tuple[str, ...]) -> Conversation:
    return Conversation(_context(prompt) + reply, tools)


def encode_pair(encoder: Encoder, rec: Preference) -> PairItem:
    chosen, rejected = _conv(rec.prompt, rec.chosen, rec.tools), _conv(rec.prompt, rec.rejected, rec.tools)
    return PairItem(encoder.encode(chosen), encoder.encode(rejected))


def encode_unpaired(encoder: Encoder, rec: UnpairedPreference) -> UnpairedItem:
    return UnpairedItem(encoder.encode(_conv(rec.prompt, rec.completion, rec.tools)), rec.label)


# --------------------------------------------------------------------------- batches


def collate_pairs(items: Sequence[PairItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows 0..n-1, rejected rows n..2n-1, right-padded together; `ref_logps` (2n) when precomputed."""
    batch = collate([p.chosen for p in items] + [p.rejected for p in items], pad_id)
    if all(p.ref_logps is not None for p in items):
        ref = [p.ref_logps[0] for p in items] + [p.ref_logps[1] for p in items]  # type: ignore[index]
        batch["ref_logps"] = torch.tensor(ref, dtype=torch.float32)
    return batch


def mismatched(items: Sequence[UnpairedItem]) -> list[Example]:
    """Prompt i with completion i+1 (mod n): the KTO paper's batch estimate of KL(policy || reference)."""
    n = len(items)
    out = []
    for i, it in enumerate(items):
        other = items[(i + 1) % n]
        p, q = it.prompt_len, other.prompt_len
        ids = it.example.input_ids[:p] + other.example.input_ids[q:]
        out.append(Example(ids, [IGNORE] * p + other.example.labels[q:]))
    return out


def collate_unpaired(items: Sequence[UnpairedItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows 0..n-1 the items, rows n..2n-1 their mismatched (KL) counterparts; `desirable` (n) as 0/1."""
    batch = collate([it.example for it in items] + mismatched(items), pad_id)
    batch["desirable"] = torch.tensor([it.label for it in items], dtype=torch.bool)
    return batch


# --------------------------------------------------------------------------- pipeline

KINDS: dict[str, type] = {"pairs": Preference, "unpaired": UnpairedPreference}


def prepare_preference(cfg: RunConfig, tokenizer: Any, kind: str) -> Prepared:
    """Like `pipeline.prepare` for preference methods: read, split/mix, encode, truncate, count, report.
    `kind` is 'pairs' (Preference records) or 'unpaired' (UnpairedPreference). Not cached (pairs are few)."""
    data = cfg.data
    if not data.train:
        raise DataError("no training data: add at least one dataset under data.train", where="config")
    encoder = Encoder(tokenizer, chat_template_for(tokenizer, cfg.model.chat_template), train_on_inputs=False)
    manifest = [file_manifest(ds.path) for ds in (*data.train, *data.eval)]
    loaded = [load_records(ds, data.max_record_bytes) for ds in data.train]
    stats = [DatasetStats(ds.path, fmt, records=len(recs)) for ds, (fmt, recs) in zip(data.train, loaded)]
    for ds, (_, recs) in zip(data.train, loaded):
        _require(kind, ds.path, recs, cfg.method.name)
    per_dataset = [recs for _, recs in loaded]  # (record, row) pairs: rows name the line in errors
    train_pairs, eval_pairs = split_and_mix(per_dataset, [ds.weight for ds in data.train], data.eval_ratio, data.seed)
    for ds in data.eval:
        fmt, recs = load_records(ds, data.max_record_bytes)
        _require(kind, ds.path, recs, cfg.method.name)
        stats.append(DatasetStats(ds.path, fmt, records=len(recs)))
        eval_pairs += [(len(stats) - 1, r) for r in recs]
    train = [x for d, r in train_pairs if (x := _encode(encoder, r, stats[d], data, "train")) is not None]
    kept = [(d, x) for d, r in eval_pairs if (x := _encode(encoder, r, stats[d], data, "eval")) is not None]
    evals, sources = [x for _, x in kept], [d for d, _ in kept]
    for s in stats:
        seen = s.train + s.eval + s.fully_masked + s.dropped_too_long
        if seen and s.fully_masked / seen > data.max_fully_masked:
            raise DataError(f"{s.fully_masked} of {seen} records lose a whole reply to max_length "
                            f"{data.max_length}; raise data.max_length", where=s.path)  # fmt: skip
    return Prepared(train, evals, stats, manifest, eval_tasks=task_names(data, sources))  # type: ignore[arg-type]


def _require(kind: str, path: str, recs: list[tuple[Record, Any]], method: str) -> None:
    want = KINDS[kind]
    for rec, row in recs[:1]:
        if not isinstance(rec, want):
            fmt = "preference (prompt, chosen, rejected)" if kind == "pairs" else "kto (prompt, completion, label)"
            raise row.error(f"method {method} needs {fmt} records, got {type(rec).__name__} in {path}")


def clip(ex: Example, max_length: int, bos: int | None) -> Example:
    """Drop prompt tokens from the left (keeping BOS) down to the reply's budget, then cut the end."""
    if len(ex.input_ids) <= max_length:
        return ex
    first = next((i for i, x in enumerate(ex.labels) if x != IGNORE), len(ex.labels))
    keep = min(first, max(max_length - (len(ex.input_ids) - first), max_length // 2))
    head = 1 if bos is not None and ex.input_ids[:1] == [bos] and keep < first else 0
    start = first - keep + head
    ids, labels = ex.input_ids[:head] + ex.input_ids[start:], ex.labels[:head] + ex.labels[start:]
    return truncate(Example(ids, labels), max_length)


def _encode(encoder: Encoder, source: tuple[Record, Row], s: DatasetStats, data: DataConfig, split: str) -> Any:
    """One record -> item, or None when dropped (too long with truncation: drop, or a reply truncated away)."""
    rec, row = source
    with at_row(row):
        if isinstance(rec, Preference):
            pair = encode_pair(encoder, rec)
            exs = [pair.chosen, pair.rejected]
        else:
            assert isinstance(rec, UnpairedPreference)
            single = encode_unpaired(encoder, rec)
            exs = [single.example]
    if any(len(e.input_ids) > data.max_length for e in exs):
        if data.truncation == "drop":
            s.dropped_too_long += 1
            return None
        s.truncated += 1
        exs = [clip(e, data.max_length, encoder.bos) for e in exs]
    if any(e.n_trainable == 0 for e in exs):
        s.fully_masked += 1  # counted and checked against max_fully_masked, never silent
        return None
    item = PairItem(exs[0], exs[1]) if isinstance(rec, Preference) else UnpairedItem(exs[0], single.label)
    setattr(s, split, getattr(s, split) + 1)
    s.tokens += sum(len(e.input_ids) for e in exs)
    s.trainable_tokens += sum(e.n_trainable for e in exs)
    s.lengths.append(item.length)
    return item
