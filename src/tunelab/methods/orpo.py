"""ORPO (Hong et al. 2024): SFT on the chosen reply plus an odds-ratio preference term; no reference.

With mean per-token log-probs a_w, a_l of the replies, log odds(y) = a - log(1 - exp(a)) and
 loss = -a_w  (the chosen reply's mean NLL)  -  beta * log sigma(log odds(y_w) - log odds(y_l)).
Per pair (mean NLL per chosen reply, summed over pairs); TRL instead averages the NLL over all chosen
tokens of the batch, which weights long replies more. Rewards logged are beta * mean log-prob.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.methods.base import Batch, BuildContext, Method, StepOutput
from tunelab.methods.logps import sequence_logps
from tunelab.methods.pairs import halves, pair_method, reward_metrics

DEFAULT_BETA = 0.1


def orpo_losses(
    mean_chosen: torch.Tensor, mean_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total per-pair loss, log sigma(log odds ratio)) from mean per-token log-probs (all < 0)."""
    log_odds = (mean_chosen - mean_rejected) - (
        torch.log1p(-torch.exp(mean_chosen)) - torch.log1p(-torch.exp(mean_rejected))
    )
    ratio = F.logsigmoid(log_odds)
    return -mean_chosen - beta * ratio, ratio


def loss(model: nn.Module, batch: Batch, beta: float = DEFAULT_BETA) -> StepOutput:
    logps, n_tokens = sequence_logps(model, batch)
    # clamp keeps log1p(-exp(a)) finite if a reply's mean log-prob rounds to 0 (a certain reply)
    chosen, rejected = halves((logps / n_tokens.clamp(min=1)).clamp(max=-1e-6))
    losses, ratio = orpo_losses(chosen, rejected, beta)
    metrics = reward_metrics(beta * chosen, beta * rejected)
    metrics |= {"nll": -chosen.detach().sum(), "log_odds_ratio": ratio.detach().sum()}
    return StepOutput(losses.sum(), metrics)


def build(ctx: BuildContext) -> Method:
    return pair_method("orpo", partial(loss, beta=ctx.cfg.method.orpo.beta))
