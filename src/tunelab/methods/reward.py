"""Reward model: a scalar head scored on preference pairs with the Bradley-Terry loss -log sigma(r_w - r_l).

The model is a Hugging Face sequence-classification model with num_labels=1 (for a decoder that reads
the last non-pad token, so `config.pad_token_id` must be set); `tunelab train` loads it through
tunelab.models.heads. `reward_model_from` turns a causal LM in memory into one with the same body and a
zero-initialized head. Pairwise accuracy (r_w > r_l) is `rewards/accuracy`.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from tunelab.errors import TunelabError
from tunelab.methods.base import Batch, BuildContext, Method, StepOutput
from tunelab.methods.pairs import halves, pair_method, reward_metrics


def reward_model_from(causal_lm: Any, pad_token_id: int) -> nn.Module:
    """A num_labels=1 sequence-classification model sharing the causal LM's body weights (zero head)."""
    from tunelab.models.heads import head_labels, head_model_from

    return head_model_from(causal_lm, "seq", head_labels("scalar", []), pad_token_id, zero_head=True)


def loss(model: nn.Module, batch: Batch, margin: float = 0.0) -> StepOutput:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if logits.dim() != 2 or logits.shape[-1] != 1:
        raise TunelabError(f"method reward needs a sequence-classification model with one output (num_labels=1), got "
                           f"logits of shape {tuple(logits.shape)}: load it with reward_model_from / num_labels=1")  # fmt: skip
    scores = logits.squeeze(-1).float()
    chosen, rejected = halves(scores)
    losses = -F.logsigmoid(chosen - rejected - margin)
    return StepOutput(losses.sum(), reward_metrics(chosen, rejected))


def build(ctx: BuildContext) -> Method:
    return pair_method("reward", loss)
