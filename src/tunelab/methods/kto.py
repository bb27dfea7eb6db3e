"""KTO (Ethayarajh et al. 2024) on unpaired completions labelled desirable or undesirable.

With r = log pi(y|x) - log ref(y|x) (summed over the reply) and z the batch estimate of
KL(pi || ref): the mean of r over *mismatched* pairs (prompt i with completion i+1, built by
data.preference.collate_unpaired), clamped at 0 and detached, as in the paper and TRL:
 desirable:   w_d * (1 - sigma(beta (r - z)))
 undesirable: w_u * (1 - sigma(beta (z - r)))
The estimate pools the mismatched pairs of the micro-batch on every process (all-reduced, as TRL
gathers it); with one item per batch on one process the "mismatched" pair is the item itself. Units are items. Metrics, summed over items like the loss:
kl (z per item), rewards/desirable and rewards/undesirable (beta r summed over each group) with
n/desirable and n/undesirable, so group means are rewards/desirable / n/desirable in the log.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tunelab.data.preference import UnpairedItem, collate_unpaired
from tunelab.methods.base import Batch, BuildContext, Method, StepOutput
from tunelab.methods.logps import reference_logps, sequence_logps

DEFAULT_BETA = 0.1


def kto_losses(
    logratios: torch.Tensor,
    kl_logratios: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-item losses, the KL estimate z) from matched and mismatched policy-minus-reference log-ratios."""
    z = batch_kl(kl_logratios.detach()).clamp(min=0)
    good = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - logratios)))
    return torch.where(desirable, good, bad), z


def batch_kl(kl_logratios: torch.Tensor) -> torch.Tensor:
    """Mean mismatched log-ratio over this micro-batch on all processes. Every process runs the same number
    of micro-batches (train plan and eval batches are padded to line up), so the all-reduce cannot hang."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return kl_logratios.mean()
    total = torch.stack([kl_logratios.sum(), torch.tensor(float(kl_logratios.numel()), device=kl_logratios.device)])
    dist.all_reduce(total)
    return total[0] / total[1]


def loss(
    model: nn.Module,
    batch: Batch,
    beta: float = DEFAULT_BETA,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    ref: nn.Module | None = None,
) -> StepOutput:
    n = batch["desirable"].shape[0]
    ratio = sequence_logps(model, batch)[0] - reference_logps(model, batch, ref)
    good = batch["desirable"]
    losses, z = kto_losses(ratio[:n], ratio[n:], good, beta, desirable_weight, undesirable_weight)
    rewards = beta * ratio[:n].detach()
    metrics = {
        "kl": z * n,
        "rewards/desirable": rewards[good].sum(),
        "rewards/undesirable": rewards[~good].sum(),
        "n/desirable": good.sum().float(),
        "n/undesirable": (~good).sum().float(),
    }
    return StepOutput(losses.sum(), metrics)


def _count(item: UnpairedItem) -> int:
    return 1


def _length(item: Any) -> int:
    return item.length


def build(ctx: BuildContext) -> Method:
    s = ctx.cfg.method.kto
    fn = partial(loss, beta=s.beta, desirable_weight=s.desirable_weight, undesirable_weight=s.undesirable_weight,
                 ref=ctx.reference())  # fmt: skip
    return Method(name="kto", collate=collate_unpaired, count=_count, loss=fn, length=_length, unit="completions")
