"""Sequence classification: a classification head on an encoder or decoder, cross-entropy on labels.

Items come from tunelab.data.heads (`labelled` rows: text + label, tokenized with the model's own
special tokens). Units are examples; the summed metric `correct` over the count is accuracy. A decoder
(Llama) head reads the last non-pad token, so the model config's pad_token_id must be the tokenizer's
(tunelab.models.heads sets it). `predict` gives label ids for the closing evaluation (tunelab.eval.heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.data.heads import ClassItem
from tunelab.errors import TunelabError
from tunelab.methods.base import Batch, BuildContext, Method, StepOutput


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
    out: list[int] = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            b = collate(items[s : s + batch_size], pad_id)
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
            out += logits.argmax(-1).tolist()
    return out


def build(ctx: BuildContext) -> Method:
    return Method(
        name="classify",
        collate=collate,
        count=lambda item: 1,
        loss=loss,
        length=lambda it: len(it.input_ids),
        unit="examples",
    )
