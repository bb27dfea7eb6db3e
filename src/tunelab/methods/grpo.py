"""GRPO (Shao et al. 2024): online RL from a reward function, advantages normalized within a group.

Per step: sample `group_size` completions for each prompt from the current policy, score each with the
reward function, advantage A = (r - mean of its group) / (std of its group + 1e-4), then one gradient
step on  mean over tokens of [ -A * log pi(token) + beta * KL_k3(pi || ref) ]  per completion, averaged
over completions (one update per sample: the PPO ratio is 1, so no clipping is needed). KL uses the k3
estimator exp(ref - pi) - (ref - pi) - 1 per token, the reference being the adapters switched off (or
a frozen copy / no KL with beta 0).

Reward functions come from a plain dict (`REWARDS`) of built-ins, or from a Python file the user names,
loaded explicitly with runpy: the file must define `reward(prompt: str, completion: str) -> float`.
Nothing is imported by a dotted name from config. This is a small loop of its own (online sampling does
not fit the offline batch plan); it is a library entry point, not yet wired to the CLI.
"""

from __future__ import annotations

import re
import runpy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.data.collate import collate
from tunelab.data.tokenize import IGNORE, Example, prompt_text
from tunelab.errors import TunelabError
from tunelab.methods.logps import labelled_logps, reference_token_logps

RewardFn = Callable[[str, str], float]


def parity_reward(prompt: str, completion: str) -> float:
    """Toy task: the prompt names 'even' or 'odd'; the share of completion characters that are digits of
    that parity (dense, so a tiny random model has signal)."""
    want = 0 if "even" in prompt.lower() else 1
    chars = [c for c in completion if not c.isspace()]
    return sum(1 for c in chars if c.isdigit() and int(c) % 2 == want) / max(len(chars), 1)


def number_reward(prompt: str, completion: str) -> float:
    """1 when the completion starts with an integer, else 0."""
    return 1.0 if re.match(r"\s*-?\d+", completion) else 0.0


REWARDS: dict[str, RewardFn] = {"parity": parity_reward, "number": number_reward}


def load_reward(spec: str) -> RewardFn:
    """A built-in name from REWARDS, or a path to a .py file defining `reward(prompt, completion)`."""
    if spec in REWARDS:
        return REWARDS[spec]
    path = Path(spec)
    if path.suffix != ".py" or not path.is_file():
        raise TunelabError(f"reward {spec!r}: expected one of {', '.join(REWARDS)} or a path to a .py file")
    fn = runpy.run_path(str(path)).get("reward")
    if not callable(fn):
        raise TunelabError(f"{path}: must define a function reward(prompt: str, completion: str) -> float")
    return fn


@dataclass
class GRPOSettings:
    group_size: int = 8
    beta: float = 0.04
    max_new_tokens: int = 8
    temperature: float = 1.0
    lr: float = 1e-3


def sample(model: Any, tok: Any, prompt: str, n: int, s: GRPOSettings) -> list[Example]:
    """n completions of one chat prompt; labels on the completion (through its EOS, if produced)."""
    ids = tok(
        prompt_text(tok, [{"role": "user", "content": prompt}], tok.chat_template), add_special_tokens=False
    ).input_ids
    x = torch.tensor([ids] * n, device=next(model.parameters()).device)
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, temperature=s.temperature,
                             top_p=1.0, top_k=0, max_new_tokens=s.max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)  # fmt: skip
    exs = []
    for row in out[:, len(ids) :].tolist():
        comp = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
        comp = [t for t in comp if t != tok.pad_token_id] or [tok.eos_token_id]
        exs.append(Example(ids + comp, [IGNORE] * len(ids) + comp))
    return exs


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(groups, group_size) rewards -> advantages normalized within each group."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)


def grpo_loss(model: nn.Module, batch: dict[str, torch.Tensor], adv: torch.Tensor, beta: float,
              ref: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(mean loss over completions, mean per-token KL) for one on-policy update."""
    logp, rows = labelled_logps(model, batch)
    n_rows = batch["labels"].shape[0]
    counts = torch.zeros(n_rows, device=logp.device).index_add(0, rows, torch.ones_like(logp))
    per_tok = -adv[rows] * logp
    kl = torch.zeros_like(logp)
    if beta > 0:
        ref_logp = reference_token_logps(model, batch, ref)
        kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
        per_tok = per_tok + beta * kl
    per_seq = torch.zeros(n_rows, device=logp.device).index_add(0, rows, per_tok) / counts.clamp(min=1)
    mean_kl = kl.detach().sum() / counts.sum().clamp(min=1)
    return per_seq.mean(), mean_kl


def train_grpo(model: nn.Module, tok: Any, prompts: Sequence[str], reward: RewardFn, steps: int,
               s: GRPOSettings | None = None, ref: nn.Module | None = None) -> list[dict[str, float]]:  # fmt: skip
    """Run `steps` GRPO updates over all prompts; returns per-step mean reward, loss and KL."""
    s = s or GRPOSettings()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr, weight_decay=0.0)
    history = []
    device = next(model.parameters()).device
    for _ in range(steps):
        exs = [ex for p in prompts for ex in sample(model, tok, p, s.group_size, s)]
        texts = [tok.decode([t for t in ex.labels if t != IGNORE], skip_special_tokens=True) for ex in exs]
        r = torch.tensor([reward(prompts[i // s.group_size], t) for i, t in enumerate(texts)], dtype=torch.float32)
        adv = advantages(r.view(len(prompts), s.group_size)).flatten().to(device)
        batch = {k: v.to(device) for k, v in collate(exs, tok.pad_token_id).items()}
        model.train()
        loss, kl = grpo_loss(model, batch, adv, s.beta, ref)
        loss.backward()
        opt.step()
        opt.zero_grad()
        history.append({"reward": float(r.mean()), "loss": float(loss), "kl": float(kl)})
    return history
