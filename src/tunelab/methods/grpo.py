"""GRPO (Shao et al. 2024): online RL from rewards, advantages normalized within a group of samples.

A Method like the others, so the one training loop runs it (checkpoints, resume, logging, accelerate,
final/ and the eval lifecycle unchanged). Items are prompts; `loss(model, batch)` does the whole
rollout for its micro-batch: sample `group_size` completions per prompt from the current policy (eval
mode, no grad; back to train mode after), score them (scoring/rewards.py), advantage
A = (r - mean of its group) / (std of its group + 1e-4), then the loss per completion

    mean over its tokens of [ -exp(logp - sg(logp)) * A + beta * KL_k3(pi || ref) ]

summed over completions (the unit is the completion, so the loop's division gives the mean). One update
per sample: the ratio is 1 in value (the loss reads -A + beta KL, as TRL's does) and its gradient is
A * grad logp, so PPO clipping would never bind. KL uses the k3 estimator exp(ref - logp) - (ref - logp) - 1
per token; the reference is the adapters switched off, or a frozen copy (full tuning), or none (beta 0).
Sampling uses the global torch RNG, whose state checkpoints restore, so a resumed run samples what an
uninterrupted one would have.

`evaluate` (run by the loop's evaluation instead of `loss`, see methods/base.py) scores one greedy
completion per eval prompt (or group_size samples at eval_temperature) and returns minus the reward as
its loss, so eval_loss = -mean reward and the best checkpoint / early stopping follow the reward.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from tunelab.config import GRPOConfig
from tunelab.data.collate import collate
from tunelab.data.prompts import PromptItem, collate_prompts
from tunelab.data.tokenize import IGNORE, Example
from tunelab.methods.base import Batch, BuildContext, Method, StepOutput
from tunelab.methods.logps import labelled_logps, reference_token_logps
from tunelab.scoring.rewards import Rewards


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(groups, group_size) rewards -> advantages normalized within each group."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)


def grpo_losses(model: nn.Module, batch: Batch, adv: torch.Tensor, beta: float,
                ref: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss per completion, mean per-token KL per completion) for one on-policy update."""
    logp, rows = labelled_logps(model, batch)
    n_rows = batch["labels"].shape[0]
    counts = torch.zeros(n_rows, device=logp.device).index_add(0, rows, torch.ones_like(logp)).clamp(min=1)
    per_tok = -torch.exp(logp - logp.detach()) * adv[rows]
    kl = torch.zeros_like(logp)
    if beta > 0:
        ref_logp = reference_token_logps(model, batch, ref)
        kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
        per_tok = per_tok + beta * kl
    per_seq = torch.zeros(n_rows, device=logp.device).index_add(0, rows, per_tok) / counts
    kl_seq = torch.zeros(n_rows, device=logp.device).index_add(0, rows, kl.detach()) / counts
    return per_seq, kl_seq


def _eos_ids(model: Any, tok: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


def sample(model: Any, tok: Any, batch: Batch, n: int, max_new_tokens: int,
           temperature: float) -> tuple[list[Example], list[str]]:  # fmt: skip
    """n completions per prompt (greedy when temperature is 0; then n must be 1), grouped by prompt: the
    training sequences (prompt + completion through its EOS, labels on the completion) and their texts."""
    eos = _eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))
    kw: dict[str, Any] = (
        dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        if temperature > 0
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    )
    was_training = model.training
    model.eval()  # no dropout while sampling: the samples come from the policy being scored
    try:
        with torch.no_grad():
            out = model.generate(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"],
                                 num_return_sequences=n, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=sorted(eos), **kw)  # fmt: skip
    finally:
        model.train(was_training)
    width = batch["prompt_ids"].shape[1]
    prompts = [row[m.bool()].tolist() for row, m in zip(batch["prompt_ids"].cpu(), batch["prompt_mask"].cpu())]
    exs, texts = [], []
    for i, row in enumerate(out[:, width:].tolist()):
        end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))  # through the first EOS
        comp, ids = row[:end], prompts[i // n]
        exs.append(Example(ids + comp, [IGNORE] * len(ids) + comp))
        texts.append(tok.decode(comp, skip_special_tokens=True))
    return exs, texts


class GRPO:
    """The rollout + loss of one micro-batch; `table` maps item indices to prompts (batches are tensors)."""

    def __init__(self, s: GRPOConfig, tok: Any, rewards: Rewards, table: dict[int, PromptItem],
                 ref: nn.Module | None) -> None:  # fmt: skip
        self.s, self.tok, self.rewards, self.table, self.ref = s, tok, rewards, table, ref

    def _rollout(self, model: nn.Module, batch: Batch, n: int, temperature: float) -> tuple[Any, ...]:
        prompts = [self.table[i].prompt for i in batch["index"].tolist()]
        exs, texts = sample(model, self.tok, batch, n, self.s.max_new_tokens, temperature)
        device = batch["prompt_ids"].device
        rewards, metrics = self.rewards([p for p in prompts for _ in range(n)], texts, n, device)
        metrics["completion_length"] = torch.tensor(float(sum(e.n_trainable for e in exs)))
        return exs, rewards, metrics

    def loss(self, model: nn.Module, batch: Batch) -> StepOutput:
        g = self.s.group_size
        exs, rewards, metrics = self._rollout(model, batch, g, self.s.temperature)
        device = batch["prompt_ids"].device
        if self.ref is not None:
            self.ref.to(device)  # built before accelerate moved the policy; a no-op once there
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        seqs = {k: v.to(device) for k, v in collate(exs, pad).items()}
        adv = advantages(rewards).flatten().to(device)
        per_seq, kl = grpo_losses(model, seqs, adv, self.s.kl_beta, self.ref)
        metrics["reward/std"] = rewards.std(1).sum() * g  # mean within-group spread: 0 means no signal
        metrics["kl"] = kl.sum()
        return StepOutput(per_seq.sum(), {k: v.to(device) for k, v in metrics.items()})

    def evaluate(self, model: nn.Module, batch: Batch) -> StepOutput:
        """Reward of greedy (or sampled) completions, scaled to the item's group_size units."""
        t, g = self.s.eval_temperature, self.s.group_size
        n = g if t > 0 else 1
        _, rewards, metrics = self._rollout(model, batch, n, t)
        scale = g / n  # the loop divides by count = group_size per prompt
        device = batch["prompt_ids"].device
        metrics = {k: (v * scale).to(device) for k, v in metrics.items()}
        return StepOutput(-metrics["reward"], metrics)


def build(ctx: BuildContext) -> Method:
    """Items are every prompt the run will batch (train and eval), looked up by index in the loss; no
    reference is kept when kl_beta is 0. Without a tokenizer (tests of defaults) sampling fails at the loss."""
    s = ctx.cfg.method.grpo
    table = {it.index: it for it in ctx.items}
    g = GRPO(s, ctx.tokenizer, Rewards(s.rewards), table, ctx.reference() if s.kl_beta > 0 else None)
    return Method(name="grpo", collate=collate_prompts, count=partial(_units, s.group_size), loss=g.loss,
                  length=_length, evaluate=g.evaluate, unit="completions")  # fmt: skip


def _units(group_size: int, item: PromptItem) -> int:
    return group_size  # the unit is the completion


def _length(item: PromptItem) -> int:
    return item.length
