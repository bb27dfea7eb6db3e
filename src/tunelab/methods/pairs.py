"""What the pairwise preference methods (dpo, simpo, orpo, reward) share: the pair batch and its metrics.

A batch holds n pairs as 2n rows (chosen first, see data.preference.collate_pairs); a method's unit is
the pair, so losses and metrics are summed over pairs and the loop divides by the number of pairs.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.data.preference import PairItem, collate_pairs
from tunelab.methods.base import Method

__all__ = ["collate_pairs", "count_pair", "halves", "pair_length", "reward_metrics"]


def count_pair(item: PairItem) -> int:
    return 1


def pair_length(item: PairItem) -> int:
    return item.length


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0] // 2
    return x[:n], x[n:]


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed over pairs (the loop divides by the pair count): implicit or explicit rewards, margin, accuracy."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    return {
        "rewards/chosen": chosen.sum(),
        "rewards/rejected": rejected.sum(),
        "rewards/margins": (chosen - rejected).sum(),
        "rewards/accuracy": (chosen > rejected).float().sum(),
    }


def pair_method(name: str, loss: Any) -> Method:
    return Method(name=name, collate=collate_pairs, count=count_pair, loss=loss, length=pair_length, unit="pairs")
