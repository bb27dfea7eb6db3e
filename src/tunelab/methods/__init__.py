"""Training objectives: one registry, `METHODS = {name: MethodSpec}`, is all the code knows about a method.

A spec says what the method trains on (`data`: the records it reads), whether it keeps a reference model, which
task head it trains (none: the LM head), whether exp(eval loss) is a perplexity, whether it needs
whole weights during training (it generates), which section of `method:` holds its settings, and how to build it
(`build(ctx) -> Method`). The config's method names, the head tables, the
perplexity rule, the data preparation and the docs table (docs/methods.md) are read from here; a test checks
that every method has an example config, a doc section, data it reads and a CLI run. The config layer sits
below this one, so it keeps its own tuple of names and the settings sections (config.METHOD_NAMES, DPOSettings,
...): the registry test holds the two together. Adding a method: see CONTRIBUTING.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from tunelab.config import MethodConfig, RunConfig, asked_metrics, stage_config
from tunelab.errors import ConfigError
from tunelab.methods import classify, distill, dpo, grpo, kto, ner, orpo, reward, sft, simpo
from tunelab.methods.base import BuildContext, Method, MethodModule, StepOutput

DataKind = Literal["sft", "pairs", "unpaired", "labelled", "tagged", "prompts"]
HeadKind = Literal["seq", "token", "scalar"]  # classes per sequence, classes per token, one zero-initialized score


@dataclass(frozen=True)
class MethodSpec:
    build: Callable[[BuildContext], Method]
    data: DataKind
    summary: str  # one line for the docs table
    settings: str | None = None  # its section under `method:` (method.dpo, ...), a field of config.MethodConfig
    reference: bool = False  # keeps a reference model (adapters off, a frozen copy, or precomputed log-probs)
    head: HeadKind | None = None  # trains a new task head instead of the LM head
    perplexity: bool | Callable[[MethodConfig], bool] = False  # the loss is the token cross-entropy of the text
    # A preference method's implicit reward, for held-out preference accuracy (tunelab.eval.preference):
    # beta * (log pi - log pi_ref) ("reference") or beta * mean log pi over the reply ("normalized").
    implicit_reward: Literal["reference", "normalized"] | None = None
    whole_weights: bool = False  # generates with the trained model during training: refused where weights are sharded


METHODS: dict[str, MethodSpec] = {
    "sft": MethodSpec(sft.build, "sft", "causal LM loss on the trained tokens", perplexity=True),
    "dpo": MethodSpec(
        dpo.build,
        "pairs",
        "DPO / IPO / rDPO / APO-zero on preference pairs",
        "dpo",
        reference=True,
        implicit_reward="reference",
    ),
    "simpo": MethodSpec(
        simpo.build, "pairs", "reference-free, length-normalized preference loss", "simpo", implicit_reward="normalized"
    ),
    "orpo": MethodSpec(
        orpo.build, "pairs", "SFT on chosen plus an odds-ratio preference term", "orpo", implicit_reward="normalized"
    ),
    "kto": MethodSpec(kto.build, "unpaired", "unpaired good/bad completions (prospect theory)", "kto", reference=True),
    "reward": MethodSpec(reward.build, "pairs", "a scalar reward model on preference pairs", head="scalar"),
    "classify": MethodSpec(classify.build, "labelled", "a sequence-classification head on text + label", head="seq"),
    "ner": MethodSpec(ner.build, "tagged", "a token-classification head on BIO-tagged tokens", head="token"),
    "grpo": MethodSpec(
        grpo.build, "prompts", "online RL from rewards on prompts", "grpo", reference=True, whole_weights=True
    ),
    "distill": MethodSpec(
        distill.build,
        "sft",
        "learn from a teacher's logits or its written replies",
        "distill",
        perplexity=lambda m: m.distill.mode == "completions",
    ),  # fmt: skip
}


def spec(name: str) -> MethodSpec:
    return METHODS[name]


def logs_perplexity(method: MethodConfig) -> bool:
    """Whether the training loop logs eval_ppl: only where the loss is token cross-entropy."""
    p = METHODS[method.name].perplexity
    return p(method) if callable(p) else p


def implicit_reward(cfg: RunConfig) -> tuple[str, float] | None:
    """(kind, beta) of the run's implicit reward (from its settings section), or None for other methods."""
    spec = METHODS[cfg.method.name]
    if spec.implicit_reward is None or spec.settings is None:
        return None
    return spec.implicit_reward, float(getattr(cfg.method, spec.settings).beta)


def head_of(cfg: RunConfig) -> HeadKind | None:
    return METHODS[cfg.method.name].head


def build_method(cfg: RunConfig, model: nn.Module | None = None, items: Sequence[Any] = (), pad_id: int = 0,
                 tokenizer: Any = None) -> Method:  # fmt: skip
    """The run's Method, built by its registry entry from one context (`items`: train + eval, for methods
    that look items up or precompute over them)."""
    return METHODS[cfg.method.name].build(BuildContext(cfg, model, tokenizer, items, pad_id))


def default_method(name: str) -> Method:
    """A method with its default settings and no model (no reference: the adapters are switched off);
    for tests and quick use."""
    return build_method(RunConfig.model_validate({"method": _defaults(name)}))


def _defaults(name: str) -> dict[str, Any]:
    need: dict[str, dict[str, Any]] = {
        "grpo": {"grpo": {"rewards": [{"function": "parity"}]}},
        "distill": {"distill": {"teacher": "tiny"}},
    }
    return {"name": name, **need.get(name, {})}


def check_run(cfg: RunConfig) -> RunConfig:
    """What the config layer cannot check alone because it depends on a method's facts; run at load time."""
    head = head_of(cfg)
    if head and cfg.tuning.mode == "qlora":
        raise ConfigError(f"tuning.mode qlora: not supported for method {cfg.method.name} (a task head); use lora")
    if head:
        other = sorted({m.name for m in asked_metrics(cfg) if m.name != "loss"})
        if other:
            raise ConfigError(f"eval.metrics: method {cfg.method.name} is scored by its head (see docs/methods.md); "
                              f"the generation metrics {other} do not apply: keep [loss] or []")  # fmt: skip
    for i, stage in enumerate(cfg.stages):
        sc = stage_config(cfg, i)
        if stage.gate and stage.gate.metric == "eval_ppl" and not logs_perplexity(sc.method):
            raise ConfigError(f"stages[{i}] ({stage.name}).gate.metric: eval_ppl is logged only for sft "
                              f"(a {sc.method.name} loss is not a token cross-entropy); "
                              "gate on eval_loss or a metric")  # fmt: skip
        check_run(sc)
    return cfg


__all__ = ["METHODS", "BuildContext", "Method", "MethodModule", "MethodSpec", "StepOutput", "build_method",
           "check_run", "default_method", "head_of", "implicit_reward", "logs_perplexity", "spec"]  # fmt: skip
