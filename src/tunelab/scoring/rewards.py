"""Reward sources for grpo: a Python function, a reward model, an LLM judge; their weighted sum.

Each source scores a list of (prompt, completion) pairs and returns one float per pair, NaN where it has no
score (a judge request that failed, or a reply with no readable score). `Rewards` fills each NaN with the
mean of the other completions of the same prompt, so a missing verdict gives that completion an advantage
of ~0 (it neither pushes nor pulls the policy); when every completion of a prompt misses, they all get 0.
Failures are counted (`judge/failed`, `judge/unparseable`, logged as a share of completions), never hidden.

- function: a built-in from `REWARDS` or a `.py` file defining `reward(prompt: str, completion: str)`,
  loaded explicitly with runpy (nothing is imported by a dotted name from config). `prompt` is the
  raw prompt text, a single user turn's content, or a conversation as 'role: content' lines.
- model: a folder (or a run directory: its final/) holding a num_labels=1 sequence-classification model
  and its tokenizer, what `method: reward` trains. Prompt + completion are rendered and tokenized the way
  reward training saw them (the one `Encoder` path, the folder's own chat template) and the raw score
  (last non-pad token) is the reward.
- judge: tunelab.scoring.judge with its SQLite cache; the single-answer score s in [min, max] becomes
  (s - min) / (max - min) in [0, 1].
"""

from __future__ import annotations

import math
import re
import runpy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tunelab.config import RewardSource
from tunelab.data.collate import collate
from tunelab.data.prompts import PromptSpec, prompt_spec, question_text
from tunelab.data.records import Conversation, Message, PromptCompletion
from tunelab.data.tokenize import Encoder, Example, chat_template_for
from tunelab.errors import TunelabError
from tunelab.models.loader import load, run_of
from tunelab.scoring.judge import Judge, api_key
from tunelab.scoring.metrics import MetricResult

RewardFn = Callable[[str, str], float]


def parity_reward(prompt: str, completion: str) -> float:
    """Toy task: the prompt names 'even' or 'odd'; the share of completion characters that are digits of
    that parity (dense, so a tiny random model has signal)."""
    want = 0 if "even" in prompt.lower() else 1
    chars = [c for c in completion if not c.isspace()]
    return sum(1 for c in chars if c in "0123456789" and int(c) % 2 == want) / max(len(chars), 1)  # not "²"


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
        raise TunelabError(f"reward function {spec!r}: expected one of {', '.join(REWARDS)} or a path to a .py file")
    fn = runpy.run_path(str(path)).get("reward")
    if not callable(fn):
        raise TunelabError(f"{path}: must define a function reward(prompt: str, completion: str) -> float")
    return fn


# --------------------------------------------------------------------------- sources
# Each: (prompts, completions, device) -> (one float or NaN per pair, counts to log summed over pairs).

Scores = tuple[list[float], dict[str, float]]


class FunctionSource:
    def __init__(self, spec: str) -> None:
        self.spec, self.fn = spec, load_reward(spec)

    def __call__(self, prompts: Sequence[PromptSpec], completions: Sequence[str], device: torch.device) -> Scores:
        out = []
        for p, c in zip(prompts, completions):
            try:
                value = self.fn(question_text(p), c)
            except Exception as e:  # the user's code: say which function and input, not a bare traceback
                raise TunelabError(f"reward function {self.spec!r} raised {type(e).__name__}: {e} "
                                   f"(prompt {question_text(p)!r}, completion {c!r})") from e  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TunelabError(f"reward function {self.spec!r} returned {value!r} for completion {c!r}; "
                                   "expected a finite number")  # fmt: skip
            out.append(float(value))
        return out, {}


class ModelSource:
    def __init__(self, path: str, batch_size: int = 16) -> None:
        folder = _model_folder(path)
        self.model, self.tok = load(folder, merge=True)  # a reward run's LoRA adapter is folded in
        if self.model.config.num_labels != 1:
            raise TunelabError(
                f"{folder}: a reward model has num_labels=1, this one has {self.model.config.num_labels}"
            )
        self.model.requires_grad_(False)
        self.pad_id = self.model.config.pad_token_id if self.model.config.pad_token_id is not None else 0
        self.encoder = Encoder(self.tok, chat_template_for(self.tok))
        self.batch_size = batch_size

    def encode(self, prompt: PromptSpec, completion: str) -> list[int]:
        if isinstance(prompt, str):
            return self.encoder.encode(PromptCompletion(prompt, completion)).input_ids
        return self.encoder.encode(Conversation((*prompt, Message("assistant", completion)))).input_ids

    def __call__(self, prompts: Sequence[PromptSpec], completions: Sequence[str], device: torch.device) -> Scores:
        self.model.to(device)  # a no-op after the first call; the policy reaches its device only in prepare()
        exs = [Example(ids, ids) for ids in map(self.encode, prompts, completions)]
        out: list[float] = []
        with torch.no_grad():
            for s in range(0, len(exs), self.batch_size):
                batch = collate(exs[s : s + self.batch_size], self.pad_id)
                logits = self.model(input_ids=batch["input_ids"].to(device),
                                    attention_mask=batch["attention_mask"].to(device)).logits  # fmt: skip
                out += logits.squeeze(-1).float().tolist()
        return out, {}


def _model_folder(path: str) -> Path:
    """A run directory of `method: reward` (full or LoRA), or a model folder with config.json."""
    p = Path(path).expanduser()
    if run_of(p) is None and not (p / "config.json").is_file():
        raise TunelabError(f"reward model {path!r}: expected a folder with config.json and safetensors weights "
                           "(a sequence-classification model with num_labels=1, or a run directory)")  # fmt: skip
    return p


class JudgeSource:
    def __init__(self, cfg: Any) -> None:
        self.judge, self.lo, self.hi = Judge(cfg), cfg.min_score, cfg.max_score
        if self.hi <= self.lo:
            raise TunelabError(f"reward judge: max_score {self.hi} must be above min_score {self.lo}")

    def __call__(self, prompts: Sequence[PromptSpec], completions: Sequence[str], device: torch.device) -> Scores:
        result = self.judge.score_all([question_text(p) for p in prompts], list(completions))
        scores = [(s - self.lo) / (self.hi - self.lo) for s in result.per_example["judge_score"]]  # NaN stays NaN
        return scores, {"judge/failed": result.details["failed"], "judge/unparseable": result.details["unparseable"]}


Source = FunctionSource | ModelSource | JudgeSource


def check_sources(specs: Sequence[RewardSource]) -> None:
    """The cheap checks of every source (names, files, folders, the judge's key), so a bad spec stops the
    run before the model loads or a run directory is written; loading happens in `Rewards`."""
    for spec in specs:
        if spec.function is not None and spec.function not in REWARDS:
            p = Path(spec.function)
            if p.suffix != ".py" or not p.is_file():
                load_reward(spec.function)  # raises with the expected forms
        elif spec.model is not None:
            _model_folder(spec.model)
        elif spec.judge is not None:
            api_key(spec.judge.api_key_env, "eval.judge", required=True)


def build_source(spec: RewardSource) -> tuple[str, Source]:
    """(metric name, scorer) of one configured source."""
    if spec.function is not None:
        return spec.name or Path(spec.function).stem, FunctionSource(spec.function)
    if spec.model is not None:
        return spec.name or Path(spec.model).name, ModelSource(spec.model)
    return spec.name or "judge", JudgeSource(spec.judge)


class Rewards:
    """The configured sources, weighted and summed: `(prompts, completions, group) -> (rewards, metrics)`."""

    def __init__(self, specs: Sequence[RewardSource]) -> None:
        built = [build_source(s) for s in specs]
        names = [n for n, _ in built]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise TunelabError(f"reward sources: two named {dupes[0]!r}; give each a distinct `name:`")
        self.sources = [(n, src, s.weight) for (n, src), s in zip(built, specs)]

    def __call__(self, prompts: Sequence[PromptSpec], completions: Sequence[str], group: int,
                 device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """Rewards (n_prompts, group) for completions grouped by prompt, and metrics summed over completions."""
        total = torch.zeros(len(completions))
        metrics: dict[str, torch.Tensor] = {}
        for name, source, weight in self.sources:
            scores, counts = source(prompts, completions, device)
            filled = fill_missing(torch.tensor(scores, dtype=torch.float32).view(-1, group)).flatten()
            total += weight * filled
            if len(self.sources) > 1:
                metrics[f"reward/{name}"] = filled.sum()
            for k, v in counts.items():
                metrics[k] = metrics.get(k, torch.zeros(())) + float(v)
        metrics["reward"] = total.sum()
        return total.view(-1, group), metrics


def reward_metric(specs: Sequence[RewardSource], prompts: Sequence[str | Sequence[Mapping[str, str]]],
                  outputs: Sequence[str], device: torch.device) -> MetricResult:  # fmt: skip
    """The `reward` eval metric (reference-free): each output scored by every source and summed by weight,
    as in training. An output a source could not score (a failed judge call) is NaN: left out of the
    mean (so the paired comparison leaves it out too) and counted as `missing`."""
    asked = [prompt_spec(p) for p in prompts]
    rewards = Rewards(specs)
    total = torch.zeros(len(outputs), dtype=torch.float64)
    per: dict[str, list[float]] = {}
    details: dict[str, float] = {}
    for name, source, weight in rewards.sources:
        scores, counts = source(asked, list(outputs), device)
        total += weight * torch.tensor(scores, dtype=torch.float64)  # NaN stays NaN
        if len(rewards.sources) > 1:
            per[f"reward/{name}"] = [float(x) for x in scores]
        for k, v in counts.items():
            details[k] = details.get(k, 0.0) + float(v)
    per = {"reward": total.tolist(), **per}
    means = {k: _nanmean(v) for k, v in per.items()}
    return MetricResult("reward", means, per, {**details, "missing": int(total.isnan().sum())})


def _nanmean(values: Sequence[float]) -> float:
    real = [v for v in values if not math.isnan(v)]
    return sum(real) / len(real) if real else math.nan


def fill_missing(scores: torch.Tensor) -> torch.Tensor:
    """(groups, group_size) with NaN -> NaN replaced by its group's mean of real scores (0 if none)."""
    real = ~scores.isnan()
    mean = torch.where(real, scores, 0).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp(min=1)
    return torch.where(real, scores, mean.expand_as(scores))
