"""Token classification (NER): a token-classification head, cross-entropy on each word's first token.

Items come from tunelab.data.heads (`token_tags` rows: words + strict BIO tags; the tag id sits on
each word's first token, -100 on the rest, special tokens and padding). Units are tagged words: the
loss is summed over them and the loop divides by their count, so every word weighs the same whatever
its sentence's length. `correct` (summed) over the count is word-level tag accuracy; the entity-level
precision/recall/F1 (seqeval) are computed by tunelab.eval.heads from `predict`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.data.collate import collate as pad_examples
from tunelab.data.heads import TagItem
from tunelab.data.tokenize import IGNORE
from tunelab.errors import TunelabError
from tunelab.methods.base import Batch, BuildContext, Method, StepOutput


def collate(items: Sequence[TagItem], pad_id: int) -> Batch:
    return pad_examples(list(items), pad_id)  # type: ignore[arg-type]  # input_ids + labels, like an Example


def count(item: TagItem) -> int:
    return item.n_words


def token_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, len, tags) logits of the input tokens. Prompt tuning prepends its virtual tokens to the
    input, so the model returns that many extra positions first: they are dropped to line up with labels."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.dim() != 3:
        raise TunelabError(f"method ner needs a token-classification model, got logits {tuple(logits.shape)}")
    return logits[:, logits.shape[1] - input_ids.shape[1] :]


def loss(model: nn.Module, batch: Batch) -> StepOutput:
    logits = token_logits(model, batch["input_ids"], batch["attention_mask"])
    mask = batch["labels"] != IGNORE
    picked, targets = logits[mask].float(), batch["labels"][mask]
    correct = (picked.argmax(-1) == targets).float().sum()
    return StepOutput(F.cross_entropy(picked, targets, reduction="sum"), {"correct": correct})


def predict(model: nn.Module, items: Sequence[TagItem], pad_id: int, batch_size: int = 64) -> list[list[int]]:
    """Per item, a tag id for every word: the argmax at its first token, or -1 for a word cut by truncation."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            b = collate(chunk, pad_id)
            best = token_logits(model, b["input_ids"].to(device), b["attention_mask"].to(device)).argmax(-1).tolist()
            out += [[best[row][i] if i >= 0 else -1 for i in it.first] for row, it in enumerate(chunk)]
    return out


def build(ctx: BuildContext) -> Method:
    return Method(name="ner", collate=collate, count=count, loss=loss, length=lambda it: len(it.input_ids),
                  unit="words")  # fmt: skip
