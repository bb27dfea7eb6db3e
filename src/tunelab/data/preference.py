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

from tunelab.config import DataConfig, DatasetConfig, RunConfig
from tunelab.data.collate import collate
from tunelab.data.prepared import (
    DROPPED,
    MASKED,
    TRUNCATED,
    DatasetStats,
    Kind,
    Outcome,
    Prepared,
    at_row,
    prepare_kind,
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
Item = PairItem | UnpairedItem


class PreferenceKind(Kind[Item]):
    """Preference (pairs) or UnpairedPreference (unpaired) records -> PairItems / UnpairedItems."""

    def __init__(self, encoder: Encoder, data: DataConfig, kind: str, method: str) -> None:
        self.encoder, self.data, self.kind, self.method = encoder, data, kind, method

    def check(self, ds: DatasetConfig, fmt: str, record: Record, row: Row) -> None:
        if not isinstance(record, KINDS[self.kind]):
            want = (
                "preference (prompt, chosen, rejected)" if self.kind == "pairs" else "kto (prompt, completion, label)"
            )
            raise row.error(f"method {self.method} needs {want} records, got {type(record).__name__} in {ds.path}")

    def encode(self, batch: list[tuple[Record, Row]]) -> list[Outcome[Item]]:
        return [_encode(self.encoder, rec, row, self.data) for rec, row in batch]

    def check_stats(self, stats: list[DatasetStats], data: DataConfig) -> None:
        for s in stats:
            seen = s.train + s.eval + s.fully_masked + s.dropped_too_long
            if seen and s.fully_masked / seen > data.max_fully_masked:
                raise DataError(f"{s.fully_masked} of {seen} records lose a whole reply to max_length "
                                f"{data.max_length}; raise data.max_length", where=s.path)  # fmt: skip


def prepare_preference(cfg: RunConfig, tokenizer: Any, kind: str) -> Prepared[Item]:
    """Read, split/mix, encode, truncate, count, report preference data (`kind` 'pairs': Preference records,
    'unpaired': UnpairedPreference). Not cached (pairs are few)."""
    encoder = Encoder(tokenizer, chat_template_for(tokenizer, cfg.model.chat_template), train_on_inputs=False)
    return prepare_kind(cfg, PreferenceKind(encoder, cfg.data, kind, cfg.method.name))


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


def _encode(encoder: Encoder, rec: Record, row: Row, data: DataConfig) -> Outcome[Item]:
    """One record -> its item and facts; no item when dropped (too long with truncation: drop) or when a reply
    was truncated away."""
    with at_row(row):
        if isinstance(rec, Preference):
            pair = encode_pair(encoder, rec)
            exs = [pair.chosen, pair.rejected]
        else:
            assert isinstance(rec, UnpairedPreference)
            single = encode_unpaired(encoder, rec)
            exs = [single.example]
    flags = 0
    if any(len(e.input_ids) > data.max_length for e in exs):
        if data.truncation == "drop":
            return Outcome(None, flags=DROPPED)
        flags = TRUNCATED
        exs = [clip(e, data.max_length, encoder.bos) for e in exs]
    if any(e.n_trainable == 0 for e in exs):
        return Outcome(None, flags=flags | MASKED)  # counted and checked against max_fully_masked, never silent
    item = PairItem(exs[0], exs[1]) if isinstance(rec, Preference) else UnpairedItem(exs[0], single.label)
    return Outcome(item, sum(len(e.input_ids) for e in exs), sum(e.n_trainable for e in exs), item.length, flags)
