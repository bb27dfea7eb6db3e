"""SimPO (Meng et al. 2024): reference-free, length-normalized preference loss with a target margin.

loss = -log sigma(beta * (mean log pi(y_w) - mean log pi(y_l)) - gamma), means over reply tokens.
Rewards logged are beta * mean log-prob. No reference model is ever run.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import nn

from tunelab.methods.base import Batch, BuildContext, Method, StepOutput
from tunelab.methods.logps import sequence_logps
from tunelab.methods.pairs import halves, pair_method, reward_metrics

DEFAULT_BETA = 2.0


def loss(model: nn.Module, batch: Batch, beta: float = DEFAULT_BETA, gamma: float = 0.5) -> StepOutput:
    logps, n_tokens = sequence_logps(model, batch)
    chosen, rejected = halves(beta * logps / n_tokens.clamp(min=1))
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return StepOutput(losses.sum(), reward_metrics(chosen, rejected))


def build(ctx: BuildContext) -> Method:
    s = ctx.cfg.method.simpo
    return pair_method("simpo", partial(loss, beta=s.beta, gamma=s.gamma))
