"""Supervised fine-tuning: causal LM cross-entropy at the positions that carry a label, summed.

Labels are aligned with input_ids (HF convention); position t predicts labels[t + 1]. For speed the
vocabulary projection runs only on the hidden states of labelled positions: we call the decoder
(`get_decoder()`), gather the rows whose next label is not IGNORE, and apply the output head to those
alone (with long prompts that is most of the compute saved). Large selections are projected in chunks
under activation checkpointing, so the full (tokens x vocab) logits never live at once.

The full forward is kept where the shortcut would be wrong: peft prompt learning (prefix/prompt tuning
inject virtual tokens inside the peft wrapper) and heads with logit soft-capping or scaling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.methods.base import Batch, BuildContext, Method, StepOutput

IGNORE = -100
CHUNK_ELEMENTS = 1 << 24  # logits elements projected at once (64 MB in fp32) before chunking kicks in


def collate(items: Sequence[Any], pad_id: int) -> Batch:
    from tunelab.data.collate import collate as pad_collate
    from tunelab.data.collate import collate_packed

    if hasattr(items[0], "position_ids"):
        return collate_packed(list(items), pad_id)
    return pad_collate(list(items), pad_id)


def count(item: Any) -> int:
    """Trainable targets of one example: labels after the first position (position 0 predicts nothing)."""
    return sum(1 for x in item.labels[1:] if x != IGNORE)


def _fast_parts(model: Any) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder, head) when hidden states -> head is exactly how the model makes logits, else None."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if model.active_peft_config.is_prompt_learning:
            return None
        model = model.get_base_model()
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) is not None:
        return None
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return None
    return model.get_decoder(), head


def _project_ce(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def ce_sum(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) against targets, chunked when the logits would be large."""
    chunk = max(1, CHUNK_ELEMENTS // head.out_features)
    if hidden.shape[0] <= chunk:
        return _project_ce(hidden, head, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(
            _project_ce, hidden[s : s + chunk], head, targets[s : s + chunk], use_reentrant=False
        )
    return total


def loss(model: nn.Module, batch: Batch) -> StepOutput:
    labels = batch["labels"]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = _fast_parts(model)
    if parts is None:
        logits = model(**inputs, use_cache=False).logits[:, -labels.shape[1] :]  # drop virtual tokens
        return StepOutput(F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="sum"))
    decoder, head = parts
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    return StepOutput(ce_sum(hidden[:, :-1][mask], head, targets[mask]))


SFT = Method(name="sft", collate=collate, count=count, loss=loss, supports_packing=True, perplexity=True)


def build(ctx: BuildContext) -> Method:
    return SFT
