"""Token classification (NER): a token-classification head, cross-entropy on each word's first token.

Items come from tunelab.data.heads (`token_tags` rows: words + strict BIO tags; the tag id sits on
each word's first token, -100 on the rest, special tokens and padding). Units are tagged words: the
loss is summed over them and the loop divides by their count, so every word weighs the same whatever
its sentence's length. `correct` (summed) over the count is word-level tag accuracy; the entity-level
precision/recall/F1 (seqeval) are computed by tunelab.eval.heads from models.heads.predict_tags.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from tunelab.data.heads import TagItem
from tunelab.data.heads import collate_tagged as collate
from tunelab.data.tokenize import IGNORE
from tunelab.methods.base import Batch, BuildContext, Method, StepOutput
from tunelab.models.heads import token_logits


def count(item: TagItem) -> int:
    return item.n_words


def loss(model: nn.Module, batch: Batch) -> StepOutput:
    logits = token_logits(model, batch["input_ids"], batch["attention_mask"])
    mask = batch["labels"] != IGNORE
    picked, targets = logits[mask].float(), batch["labels"][mask]
    correct = (picked.argmax(-1) == targets).float().sum()
    return StepOutput(F.cross_entropy(picked, targets, reduction="sum"), {"correct": correct})


def build(ctx: BuildContext) -> Method:
    return Method(name="ner", collate=collate, count=count, loss=loss, length=lambda it: len(it.input_ids),
                  unit="words")  # fmt: skip
