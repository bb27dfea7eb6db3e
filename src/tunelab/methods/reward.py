"""Reward model: a scalar head scored on preference pairs with the Bradley-Terry loss -log sigma(r_w - r_l).

The model is a Hugging Face sequence-classification model with num_labels=1 (for a decoder that reads
the last non-pad token, so `config.pad_token_id` must be set). `reward_model_from` turns a causal LM
into one with the same body and a zero-initialized head, for presets built in memory; from a folder, load
`AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`. Pairwise accuracy
(r_w > r_l) is `rewards/accuracy`.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from tunelab.config import MethodConfig
from tunelab.errors import TunelabError
from tunelab.methods.base import Batch, Method, StepOutput
from tunelab.methods.pairs import halves, pair_method, reward_metrics


def reward_model_from(causal_lm: Any, pad_token_id: int) -> nn.Module:
    """A num_labels=1 sequence-classification model sharing the causal LM's body weights (head is new)."""
    from transformers import AutoModelForSequenceClassification

    raw = {k: v for k, v in causal_lm.config.to_dict().items() if k not in ("id2label", "label2id")}
    cfg = causal_lm.config.__class__.from_dict({**raw, "num_labels": 1, "pad_token_id": pad_token_id})
    model = AutoModelForSequenceClassification.from_config(cfg)
    head = model.score if hasattr(model, "score") else model.classifier
    nn.init.zeros_(head.weight)  # every reward starts at 0: deterministic, and the loss starts at log 2
    missing, _ = model.load_state_dict(causal_lm.state_dict(), strict=False)
    body_missing = [k for k in missing if not k.startswith(("score", "classifier"))]
    if body_missing:
        raise ValueError(f"reward_model_from: body weights not found in the causal LM: {body_missing[:5]}")
    return model.to(next(causal_lm.parameters()).dtype)


def loss(model: nn.Module, batch: Batch, margin: float = 0.0) -> StepOutput:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if logits.dim() != 2 or logits.shape[-1] != 1:
        raise TunelabError(f"method reward needs a sequence-classification model with one output (num_labels=1), got "
                           f"logits of shape {tuple(logits.shape)}: load it with reward_model_from / num_labels=1")  # fmt: skip
    scores = logits.squeeze(-1).float()
    chosen, rejected = halves(scores)
    losses = -F.logsigmoid(chosen - rejected - margin)
    return StepOutput(losses.sum(), reward_metrics(chosen, rejected))


def build(cfg: MethodConfig, ref: nn.Module | None = None) -> Method:
    return pair_method("reward", loss)
