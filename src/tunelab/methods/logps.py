"""Per-sequence log-probabilities at labelled positions, and the reference model's, for preference methods.

Like SFT, the output head runs only on the hidden states of labelled positions (via sft's `_fast_parts`;
the full forward where that shortcut would be wrong), chunked under activation checkpointing when large.
Per-token log-probs are scatter-added back to their row: `sequence_logps` returns (sum of log-probs,
number of labelled tokens) per row, so callers get both the sum (DPO) and the mean (SimPO, ORPO, IPO).

The reference: precomputed `ref_logps` in the batch when present; else a frozen model given explicitly
(full tuning: a deep copy, eval mode, no grad); else, for a peft model, the same model with its adapters
switched off (`disable_adapter()`: the base weights, no second copy in memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunelab.data.preference import PairItem, collate_pairs
from tunelab.errors import TunelabError
from tunelab.methods.base import Batch
from tunelab.methods.sft import CHUNK_ELEMENTS, IGNORE, _fast_parts


def _token_logps(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _chunked_logps(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    chunk = max(1, CHUNK_ELEMENTS // cast(nn.Linear, head).out_features)
    if hidden.shape[0] <= chunk:
        return _token_logps(hidden, head, targets)
    parts = [
        checkpoint(_token_logps, hidden[s : s + chunk], head, targets[s : s + chunk], use_reentrant=False)
        for s in range(0, hidden.shape[0], chunk)
    ]
    return torch.cat(parts)


def labelled_logps(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each labelled token, its row index), in row-major order; position t predicts labels[t + 1]."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(targets)[mask]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    parts = _fast_parts(model)
    if parts is None:
        logits = model(**inputs, use_cache=False).logits[:, -labels.shape[1] :]  # drop virtual tokens
        return -F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="none"), rows
    decoder, head = parts
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    return _chunked_logps(hidden[:, :-1][mask], head, targets[mask]), rows


def sequence_logps(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, labelled token count) per row."""
    tok, rows = labelled_logps(model, batch)
    n = batch["labels"].shape[0]
    sums = torch.zeros(n, device=tok.device, dtype=tok.dtype).index_add(0, rows, tok)
    return sums, (batch["labels"][:, 1:] != IGNORE).sum(1)


def _reference(model: nn.Module, batch: Batch, ref: nn.Module | None, fn: Callable) -> torch.Tensor:
    with torch.no_grad():
        if ref is not None:
            device = batch["input_ids"].device
            if next(ref.parameters()).device != device:  # built before accelerate moved the policy
                ref.to(device)
            return fn(ref, batch)[0]
        from peft import PeftModel

        if isinstance(model, PeftModel):
            with model.disable_adapter():
                return fn(model, batch)[0]
    raise TunelabError(
        "this method needs a reference model: use an adapter tuning mode (lora, ...) or build the method with "
        "ref=frozen_copy(model) (full tuning), or precompute reference log-probs"
    )


def reference_logps(model: nn.Module, batch: Batch, ref: nn.Module | None) -> torch.Tensor:
    """Reference log-prob sums per row (no gradient), from the batch, a frozen model, or disabled adapters."""
    if "ref_logps" in batch:
        return batch["ref_logps"]
    return _reference(model, batch, ref, sequence_logps)


def reference_token_logps(model: nn.Module, batch: Batch, ref: nn.Module | None) -> torch.Tensor:
    """Reference log-probs of each labelled token (same order as `labelled_logps`), no gradient."""
    return _reference(model, batch, ref, labelled_logps)


def precompute_reference(model: nn.Module, items: Sequence[PairItem], pad_id: int, batch_size: int = 8) -> None:
    """Fill each pair's `ref_logps` once, before training, from `model` as it is now (the reference); the
    batches then carry them and no reference forward runs during training (and no copy is kept)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items() if k != "ref_logps"}
        with torch.no_grad():
            logps = sequence_logps(model, batch)[0].tolist()
        for i, it in enumerate(chunk):
            it.ref_logps = (logps[i], logps[i + len(chunk)])
    model.train(was_training)
