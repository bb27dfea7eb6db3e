"""Sequence classification: a classification head on an encoder or decoder, cross-entropy on labels.

Items come from tunelab.data.heads (`labelled` rows: text + label, tokenized with the model's own
special tokens). Units are examples; the summed metric `correct` over the count is accuracy. A decoder
(Llama) head reads the last non-pad token, so the model config's pad_token_id must be the tokenizer's
(tunelab.models.heads sets it). The closing evaluation predicts with tunelab.models.heads.predict_classes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from tunelab.data.heads import collate_labelled as collate
from tunelab.errors import TunelabError
from tunelab.methods.base import Batch, BuildContext, Method, StepOutput


def loss(model: nn.Module, batch: Batch) -> StepOutput:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    if logits.dim() != 2:
        raise TunelabError(f"method classify needs a sequence-classification model, got logits {tuple(logits.shape)}")
    correct = (logits.argmax(-1) == batch["labels"]).float().sum()
    return StepOutput(F.cross_entropy(logits, batch["labels"], reduction="sum"), {"correct": correct})


def build(ctx: BuildContext) -> Method:
    return Method(
        name="classify",
        collate=collate,
        count=lambda item: 1,
        loss=loss,
        length=lambda it: len(it.input_ids),
        unit="examples",
    )
