"""DPO (Rafailov et al. 2023) with its label-smoothed "conservative" variant, IPO (Azar et al. 2023), robust DPO
(Chowdhury et al. 2024) and APO-zero (D'Oosterlinck et al. 2024).

logits = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), log-probs summed over the reply
 sigmoid:  -(1 - eps) log sigma(beta logits) - eps log sigma(-beta logits)     (eps = label_smoothing)
 ipo:      (logits - 1 / (2 beta))^2 with log-probs averaged over reply tokens (as TRL does), so the
           target margin 1/(2 beta) does not depend on reply length.
 robust:   (-(1 - eps) log sigma(beta logits) + eps log sigma(-beta logits)) / (1 - 2 eps): an unbiased
           estimate of the clean-label DPO loss when a fraction eps of the pairs is flipped.
 apo_zero: (1 - sigma(beta r_w)) + sigma(beta r_l) with r the log-ratios of each reply: raises the chosen
           reply's likelihood and lowers the rejected one's, each against the reference (for pairs whose
           chosen reply is better than what the model writes now).
Implicit rewards beta (log pi - log ref) are logged; for ipo they are on the averaged log-probs.
The reference comes from methods.logps.reference_logps (precomputed / frozen copy / adapters off).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.methods.base import Batch, BuildContext, Method, StepOutput
from tunelab.methods.logps import precompute_reference, reference_logps, sequence_logps
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
    eps = label_smoothing
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        return (-F.logsigmoid(beta * logits) * (1 - eps) + F.logsigmoid(-beta * logits) * eps) / (1 - 2 * eps)
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(beta * logratio_chosen)) + torch.sigmoid(beta * logratio_rejected)
    raise ValueError(f"dpo loss_type: expected sigmoid, ipo, robust or apo_zero, got {loss_type!r}")


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


def build(ctx: BuildContext) -> Method:
    """The reference: log-probs computed now into the items (precompute), else ctx.reference()."""
    s = ctx.cfg.method.dpo
    ref = None
    if s.reference == "precompute" and ctx.model is not None:
        precompute_reference(ctx.model, ctx.items, ctx.pad_id)
    elif s.reference == "auto":
        ref = ctx.reference()
    fn = partial(loss, beta=s.beta, label_smoothing=s.label_smoothing, loss_type=s.loss_type, ref=ref)
    return pair_method("dpo", fn)
