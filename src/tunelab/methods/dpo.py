"""DPO (Rafailov et al. 2023), its label-smoothed "conservative" variant, and IPO (Azar et al. 2023).

logits = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), log-probs summed over the reply
 sigmoid: -(1 - eps) log sigma(beta logits) - eps log sigma(-beta logits)     (eps = label_smoothing)
 ipo:     (logits - 1 / (2 beta))^2 with log-probs averaged over reply tokens (as TRL does), so the
          target margin 1/(2 beta) does not depend on reply length.
Implicit rewards beta (log pi - log ref) are logged; for ipo they are on the averaged log-probs.
The reference comes from methods.logps.reference_logps (precomputed / frozen copy / adapters off).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.config import MethodConfig
from tunelab.methods.base import Batch, Method, StepOutput
from tunelab.methods.logps import reference_logps, sequence_logps
from tunelab.methods.pairs import halves, pair_method, reward_metrics

DEFAULT_BETA = 0.1


def dpo_losses(
    logratio_chosen: torch.Tensor,
    logratio_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> torch.Tensor:
    """Per-pair loss from policy-minus-reference log-ratios of chosen and rejected replies."""
    logits = logratio_chosen - logratio_rejected
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    if loss_type != "sigmoid":
        raise ValueError(f"dpo loss_type: expected sigmoid or ipo, got {loss_type!r}")
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


def loss(
    model: nn.Module,
    batch: Batch,
    beta: float = DEFAULT_BETA,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    ref: nn.Module | None = None,
) -> StepOutput:
    policy, n_tokens = sequence_logps(model, batch)
    reference = reference_logps(model, batch, ref)
    ratio = policy - reference
    if loss_type == "ipo":
        ratio = ratio / n_tokens.clamp(min=1)
    chosen, rejected = halves(ratio)
    losses = dpo_losses(chosen, rejected, beta, label_smoothing, loss_type)
    metrics = reward_metrics(beta * chosen, beta * rejected)
    pc, pr = halves(policy.detach())
    metrics |= {"logps/chosen": pc.sum(), "logps/rejected": pr.sum()}
    return StepOutput(losses.sum(), metrics)


def build(cfg: MethodConfig, ref: nn.Module | None = None) -> Method:
    """`ref`: a frozen reference model for full tuning; None for adapter modes or precomputed log-probs."""
    beta = cfg.beta if cfg.beta is not None else DEFAULT_BETA
    fn = partial(loss, beta=beta, label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type, ref=ref)
    return pair_method("dpo", fn)
