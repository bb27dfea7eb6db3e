"""Shared by the preference-method tests: a toy preference task and a short overfitting loop."""

from __future__ import annotations

from typing import Any

import torch

from tunelab.data.preference import PairItem, encode_pair
from tunelab.data.records import Message, Preference
from tunelab.data.tokenize import Encoder
from tunelab.methods.base import Method

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle",
         "forest", "mirror", "rocket", "garden", "silver", "window", "dragon", "pepper"]  # fmt: skip


def toy_pairs(tok: Any, n: int = 16) -> list[PairItem]:
    """'Say WORD' -> chosen: the word; rejected: the word reversed. 16 prompts, short replies."""
    enc = Encoder(tok, tok.chat_template)
    out = []
    for w in WORDS[:n]:
        rec = Preference((Message("user", f"Say {w}"),), (Message("assistant", w),), (Message("assistant", w[::-1]),))
        out.append(encode_pair(enc, rec))
    return out


def run_steps(model: torch.nn.Module, method: Method, items: list, pad_id: int, steps: int, lr: float) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batch = method.collate(items, pad_id)
    units = sum(method.count(x) for x in items)
    model.train()
    for _ in range(steps):
        out = method.loss(model, batch)
        (out.loss_sum / units).backward()
        opt.step()
        opt.zero_grad()


def mean_metrics(model: torch.nn.Module, method: Method, items: list, pad_id: int) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = method.loss(model, method.collate(items, pad_id))
    units = sum(method.count(x) for x in items)
    return {"loss": float(out.loss_sum) / units, **{k: float(v) / units for k, v in out.metrics.items()}}
