"""Data for the head methods: `Labelled` rows (classify) and `TokenTags` rows (ner) -> tokenized items.

A classifier reads raw text, not a chat template: texts are tokenized by the model's own tokenizer with
its special tokens ([CLS] ... [SEP] for BERT, BOS for Llama). NER words are joined with single spaces and
that text is tokenized once; each word's first token (found by character offsets) carries the word's tag
id, every other token -100. The model therefore sees what it sees on raw text at inference, and any fast
tokenizer works (no `is_split_into_words`, which byte-level tokenizers handle badly).

Label sets come from ALL training rows (before the eval_ratio split, so the set does not depend on the
seed): classify uses the sorted label names; ner uses O plus B-/I- of every entity type seen. An eval
label (or entity type) outside that set is an error naming the file, line and field: the head could
never predict it. Over-long texts are truncated (or dropped with `data.truncation: drop`) and counted;
NER words left without a token of their own are counted (`words_cut`) and scored as predicted O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    encode_only,
    prepare_kind,
)
from tunelab.data.records import Labelled, Record, TokenTags
from tunelab.data.sources import Row
from tunelab.data.tokenize import IGNORE

FORMAT_OF = {"labelled": "labelled", "tagged": "token_tags"}  # data kind (tunelab.methods) -> the record format
RECORD_OF = {"labelled": Labelled, "token_tags": TokenTags}


@dataclass
class ClassItem:
    input_ids: list[int]
    label: int
    text: str = ""  # the raw text and where it came from, for the eval report
    where: str = ""


@dataclass
class TagItem:
    input_ids: list[int]
    labels: list[int]  # tag id at each word's first token, IGNORE elsewhere
    first: tuple[int, ...]  # token index of each word's first token, -1 when the word has none (cut)
    words: tuple[str, ...]
    tags: tuple[str, ...]  # gold tags of every word, also the cut ones
    where: str = ""

    @property
    def n_words(self) -> int:
        return sum(1 for i in self.first if i >= 0)


HeadItem = ClassItem | TagItem


@dataclass
class HeadPrepared(Prepared[HeadItem]):
    labels: list[str] = field(default_factory=list)  # id -> name: the head's outputs

    def report(self) -> dict[str, Any]:
        return super().report() | {"labels": len(self.labels), "label_names": self.labels}


@dataclass
class HeadStats(DatasetStats):
    words_cut: int = 0  # ner: words that lost their token to truncation (scored as predicted O)


# --------------------------------------------------------------------------- labels


def with_format(ds: DatasetConfig, fmt: str) -> DatasetConfig:
    """`format: auto` means the method's format (a text + label row would otherwise be detected as text)."""
    return ds.model_copy(update={"format": fmt}) if ds.format == "auto" else ds


def resolve_formats(cfg: RunConfig, kind: str) -> RunConfig:
    """The config with the data kind's format in place of `auto` (labelled, tagged), so the data check, the
    pipeline and the saved config.yaml all say what was read."""
    fmt = FORMAT_OF.get(kind)
    if fmt is None:
        return cfg
    data = cfg.data.model_copy(update={k: [with_format(d, fmt) for d in getattr(cfg.data, k)] for k in ("train", "eval")})  # fmt: skip
    evals = cfg.eval.model_copy(update={"data": [with_format(d, fmt) for d in cfg.eval.data]})
    return cfg.model_copy(update={"data": data, "eval": evals})


def label_names(records: Sequence[Labelled | TokenTags]) -> list[str]:
    """classify: sorted label names; ner: O, then B-/I- of each entity type (both, so I- is predictable)."""
    if records and isinstance(records[0], Labelled):
        return sorted({r.label for r in records if isinstance(r, Labelled)})
    types = sorted({t[2:] for r in records if isinstance(r, TokenTags) for t in r.tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def _unknown(rec: Labelled | TokenTags, label2id: dict[str, int]) -> tuple[str, str] | None:
    """(value, where) of the first label the head does not have."""
    if isinstance(rec, Labelled):
        return None if rec.label in label2id else (rec.label, "")
    bad = next((i for i, t in enumerate(rec.tags) if t not in label2id), None)
    return None if bad is None else (rec.tags[bad], f"position {bad}: ")


# --------------------------------------------------------------------------- encoding


def encode_text(tokenizer: Any, text: str, max_length: int) -> tuple[list[int], bool]:
    """(token ids with the tokenizer's special tokens, truncated?)."""
    ids = tokenizer(text)["input_ids"]
    if len(ids) <= max_length:
        return ids, False
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"], True


def align_words(tokenizer: Any, words: Sequence[str], max_length: int) -> tuple[list[int], list[int], bool]:
    """(token ids, each word's first token index or -1, truncated?) for the words joined by spaces."""
    spans, pos = [], 0
    for word in words:
        spans.append((pos, pos + len(word)))
        pos += len(word) + 1
    text = " ".join(words)
    truncated = len(tokenizer(text)["input_ids"]) > max_length
    enc = tokenizer(text, truncation=truncated, max_length=max_length if truncated else None,
                    return_offsets_mapping=True)  # fmt: skip
    first, w = [-1] * len(words), 0
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:  # special tokens have empty spans
            continue
        while w < len(spans) and spans[w][1] <= s:
            w += 1
        if w < len(spans) and first[w] < 0 and s < spans[w][1] and e > spans[w][0]:
            first[w] = i
    return enc["input_ids"], first, truncated


def encode_record(tokenizer: Any, rec: Labelled | TokenTags, label2id: dict[str, int], max_length: int,
                  where: str = "") -> tuple[ClassItem | TagItem, bool]:  # fmt: skip
    """One record -> (item, truncated?)."""
    if isinstance(rec, Labelled):
        ids, cut = encode_text(tokenizer, rec.text, max_length)
        return ClassItem(ids, label2id[rec.label], rec.text, where), cut
    ids, first, cut = align_words(tokenizer, rec.tokens, max_length)
    labels = [IGNORE] * len(ids)
    for i, tag in zip(first, rec.tags):
        if i >= 0:
            labels[i] = label2id[tag]
    return TagItem(ids, labels, tuple(first), rec.tokens, rec.tags, where), cut


class HeadKind(Kind[HeadItem]):
    """Labelled (classify) or TokenTags (ner) records -> ClassItems / TagItems, with the label set of all
    training records (read first: `plan`), or a given one (eval.data of a trained run)."""

    stats_type = HeadStats

    def __init__(self, tokenizer: Any, data: DataConfig, fmt: str, method: str, labels: list[str] | None = None):
        self.tok, self.data, self.fmt, self.method = tokenizer, data, fmt, method
        self.max_length = max_length_for(tokenizer, data)
        self.labels = labels or []
        self.needs_plan = labels is None

    def check(self, ds: DatasetConfig, fmt: str, record: Record, row: Row) -> None:
        if not isinstance(record, RECORD_OF[self.fmt]):
            fields = "text, label" if self.fmt == "labelled" else "tokens, tags"
            raise row.error(f"method {self.method} needs {self.fmt} records ({fields}), got "
                            f"{type(record).__name__} (format {fmt}) in {ds.path}")  # fmt: skip

    def plan(self, records: list[Record]) -> None:
        self.labels = label_names([r for r in records if isinstance(r, (Labelled, TokenTags))])

    def encode(self, batch: list[tuple[Record, Row]]) -> list[Outcome[HeadItem]]:
        label2id = {name: i for i, name in enumerate(self.labels)}
        return [self._encode(rec, row, label2id) for rec, row in batch]

    def _encode(self, rec: Record, row: Row, label2id: dict[str, int]) -> Outcome[HeadItem]:
        assert isinstance(rec, (Labelled, TokenTags))
        if (bad := _unknown(rec, label2id)) is not None:
            field_name = "label" if isinstance(rec, Labelled) else "tags"
            raise row.error(f"{bad[1]}{bad[0]!r} is not among the {len(label2id)} labels of the training data "
                            f"({', '.join(list(label2id)[:8])}{', ...' if len(label2id) > 8 else ''}): the head "
                            "could never predict it", field_name)  # fmt: skip
        item, cut = encode_record(self.tok, rec, label2id, self.max_length, _where(row))
        if cut and self.data.truncation == "drop":
            return Outcome(None, flags=DROPPED)
        flags = TRUNCATED if cut else 0
        n_units = item.n_words if isinstance(item, TagItem) else 1
        if n_units == 0:  # every word cut (a tiny max_length): nothing to learn or score
            return Outcome(None, flags=flags | MASKED)
        cut_words = len(item.first) - n_units if isinstance(item, TagItem) else 0
        return Outcome(item, len(item.input_ids), n_units, len(item.input_ids), flags, cut_words)


def _where(row: Row) -> str:
    return f"{row.source}:{row.line}" if row.line else f"{row.source}#{row.index}"


# --------------------------------------------------------------------------- pipeline


def max_length_for(tokenizer: Any, data: DataConfig) -> int:
    """data.max_length, capped at the tokenizer's own limit (BERT-likes have 512 positions)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return min(data.max_length, limit) if isinstance(limit, int) and limit < 1_000_000 else data.max_length


def prepare_heads(cfg: RunConfig, tokenizer: Any, kind: str) -> HeadPrepared:
    """Read, split/mix, label, encode and count labelled or tagged data (not cached: tokenizing short texts is
    fast)."""
    data, fmt = cfg.data, FORMAT_OF[kind]
    cfg = cfg.model_copy(update={"data": data.model_copy(update={k: [with_format(d, fmt) for d in getattr(data, k)]
                                                                  for k in ("train", "eval")})})  # fmt: skip
    head = HeadKind(tokenizer, cfg.data, fmt, cfg.method.name)
    p = prepare_kind(cfg, head)
    return HeadPrepared(p.train, p.eval, p.stats, p.manifest, eval_tasks=p.eval_tasks, labels=head.labels)


def encode_datasets(cfg: RunConfig, tokenizer: Any, datasets: Sequence[DatasetConfig], labels: list[str],
                    kind: str) -> list[HeadItem]:  # fmt: skip
    """Eval items of extra datasets (eval.data) with the run's label set."""
    fmt = FORMAT_OF[kind]
    head = HeadKind(tokenizer, cfg.data, fmt, cfg.method.name, labels)
    return encode_only(cfg, head, [with_format(ds, fmt) for ds in datasets])


# --------------------------------------------------------------------------- batches


def collate_labelled(items: Sequence[ClassItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask, one label per row."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        ids[row, : len(it.input_ids)] = torch.tensor(it.input_ids)
        mask[row, : len(it.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([it.label for it in items])}


def collate_tagged(items: Sequence[TagItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Like an Example batch: input_ids + labels (a tag id on each word's first token, IGNORE elsewhere)."""
    return collate(list(items), pad_id)  # type: ignore[arg-type]  # a TagItem has an Example's fields
