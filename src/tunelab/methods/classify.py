"""Sequence classification: a classification head on an encoder or decoder, cross-entropy on labels.

Data are rows with a text field and a label field (`read_labelled`, through data.sources so errors
name file and line). Texts are tokenized by the model's own tokenizer with its special tokens ([CLS]
... [SEP] for BERT-likes): a classifier sees raw text, not a chat template, so this is not the SFT
tokenization path. Label ids come from the sorted label names of the training data; an eval label not
seen in training is an error (it could never be predicted). Units are examples; the summed metric
`correct` over the count is accuracy. `evaluate` gives accuracy and macro precision/recall/F1
(scikit-learn) for the closing report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.config import MethodConfig
from tunelab.data.sources import read_rows
from tunelab.errors import DataError, TunelabError
from tunelab.methods.base import Batch, Method, StepOutput


@dataclass
class ClassItem:
    input_ids: list[int]
    label: int


def read_labelled(path: str, text_field: str = "text", label_field: str = "label") -> list[tuple[str, str]]:
    """(text, label) per row; a missing or empty field stops with file, line and field."""
    out = []
    for row in read_rows(path):
        for f in (text_field, label_field):
            if row.data.get(f) in (None, ""):
                raise row.error(f"expected a non-empty {f!r} (fields: {sorted(row.data)})", f)
        out.append((str(row.data[text_field]), str(row.data[label_field])))
    return out


def label_ids(pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
    return {name: i for i, name in enumerate(sorted({lab for _, lab in pairs}))}


def encode(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], labels: dict[str, int], max_length: int
) -> list[ClassItem]:
    unknown = sorted({lab for _, lab in pairs if lab not in labels})
    if unknown:
        raise DataError(f"labels not in the training data: {unknown[:5]}", where="classify data")
    enc = tokenizer([t for t, _ in pairs], truncation=True, max_length=max_length)
    return [ClassItem(ids, labels[lab]) for ids, (_, lab) in zip(enc["input_ids"], pairs)]


def collate(items: Sequence[ClassItem], pad_id: int) -> Batch:
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        ids[row, : len(it.input_ids)] = torch.tensor(it.input_ids)
        mask[row, : len(it.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([it.label for it in items])}


def loss(model: nn.Module, batch: Batch) -> StepOutput:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    if logits.dim() != 2:
        raise TunelabError(f"method classify needs a sequence-classification model, got logits {tuple(logits.shape)}")
    correct = (logits.argmax(-1) == batch["labels"]).float().sum()
    return StepOutput(F.cross_entropy(logits, batch["labels"], reduction="sum"), {"correct": correct})


def predict(model: nn.Module, items: Sequence[ClassItem], pad_id: int, batch_size: int = 64) -> list[int]:
    device = next(model.parameters()).device
    model.eval()
    out: list[int] = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            b = collate(items[s : s + batch_size], pad_id)
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
            out += logits.argmax(-1).tolist()
    return out


def evaluate(model: nn.Module, items: Sequence[ClassItem], pad_id: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    truth, pred = [it.label for it in items], predict(model, items, pad_id)
    p, r, f, _ = precision_recall_fscore_support(truth, pred, average="macro", zero_division=0)
    return {"accuracy": float(accuracy_score(truth, pred)), "macro_precision": float(p), "macro_recall": float(r),
            "macro_f1": float(f)}  # fmt: skip


def build(cfg: MethodConfig, ref: nn.Module | None = None) -> Method:
    return Method(
        name="classify", collate=collate, count=lambda item: 1, loss=loss, length=lambda it: len(it.input_ids)
    )
