"""Training objectives. Add one: a module that builds a `Method`, one line here, an example config,
tests (loss against a hand computation, trainable params change, overfits), a doc page.

Methods with settings (beta, ...) or a reference model are built per run by `build_method`; METHODS
holds each with its defaults (reference = the adapters switched off), for tests and quick use.
`DATA_KIND` says which records a method trains on: sft (conversations), pairs or unpaired preference,
labelled texts or BIO-tagged tokens, or prompts (grpo, which is built with the tokenizer and its prompt items,
outside BUILDERS). distill trains on sft records and needs a teacher, so it too is built outside BUILDERS
(`distill.build(cfg, teacher)` from Python). Head methods (classify, ner, reward) train a model with a task
head instead of the LM head (tunelab.models.heads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from tunelab.config import MethodConfig, RunConfig, asks_reward, eval_settings
from tunelab.methods import classify, distill, dpo, grpo, kto, ner, orpo, reward, simpo
from tunelab.methods.base import Method, MethodModule, StepOutput
from tunelab.methods.sft import SFT

BUILDERS: dict[str, Callable[[MethodConfig, nn.Module | None], Method]] = {
    "dpo": dpo.build,
    "simpo": simpo.build,
    "orpo": orpo.build,
    "kto": kto.build,
    "reward": reward.build,
    "classify": classify.build,
    "ner": ner.build,
}
METHODS: dict[str, Method] = {"sft": SFT} | {k: b(MethodConfig(name=k), None) for k, b in BUILDERS.items()}  # type: ignore[arg-type]
DATA_KIND: dict[str, str] = {"sft": "sft", "dpo": "pairs", "simpo": "pairs", "orpo": "pairs", "reward": "pairs",
                             "kto": "unpaired", "classify": "labelled", "ner": "tagged", "grpo": "prompts",
                             "distill": "sft"}  # fmt: skip
NEEDS_REFERENCE = {"dpo", "kto", "grpo"}


def build_method(cfg: RunConfig, model: nn.Module, train_items: list[Any] | None = None, pad_id: int = 0,
                 tokenizer: Any = None) -> Method:  # fmt: skip
    """The run's Method. Reference for dpo/kto/grpo: adapters off (peft model), else a frozen copy (full/freeze
    tuning), or, with method.reference=precompute (dpo), log-probs written into the items right now;
    none for grpo with kl_beta 0. distill (logits): the teacher, its vocabulary checked against `tokenizer`."""
    from peft import PeftModel

    from tunelab.methods.logps import frozen_copy, precompute_reference

    m = cfg.method
    if m.name == "sft":
        return SFT
    if m.name == "distill":
        if m.distill.mode == "completions":
            return distill.build(m, None)
        from tunelab.models.load import load_tokenizer

        return distill.build(m, distill.load_teacher(cfg, tokenizer or load_tokenizer(cfg.model)))
    ref = None
    if m.name in NEEDS_REFERENCE and not (m.name == "grpo" and m.grpo.kl_beta == 0):
        if m.reference == "precompute" and m.name == "dpo":
            precompute_reference(model, train_items or [], pad_id)
        elif not isinstance(model, PeftModel):
            ref = frozen_copy(model)
    if m.name == "grpo":
        return grpo.build(m, tokenizer, train_items or [], ref)
    return BUILDERS[m.name](m, ref)


def prepare_data(cfg: RunConfig, tokenizer: Any) -> Any:
    """The data pipeline the method needs: SFT examples, preference pairs / unpaired items, prompts, or head
    items (a HeadPrepared, which also carries the label names)."""
    from tunelab.data.heads import prepare_heads
    from tunelab.data.pipeline import prepare
    from tunelab.data.preference import prepare_preference
    from tunelab.data.prompts import prepare_prompts
    from tunelab.methods.rewards import check_sources

    if asks_reward(cfg):  # the reward metric's sources: a bad one must not surface after training
        check_sources(eval_settings(cfg).rewards)
    kind = DATA_KIND[cfg.method.name]
    if kind in ("labelled", "tagged"):
        return prepare_heads(cfg, tokenizer)
    if kind == "prompts":
        check_sources(cfg.method.grpo.rewards)  # before the model loads and the run directory is written
        return prepare_prompts(cfg, tokenizer)
    return prepare(cfg, tokenizer) if kind == "sft" else prepare_preference(cfg, tokenizer, kind)


__all__ = ["BUILDERS", "DATA_KIND", "METHODS", "Method", "MethodModule", "StepOutput", "build_method", "prepare_data"]
