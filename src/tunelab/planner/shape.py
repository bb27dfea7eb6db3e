"""What the planner knows of a model: parameter counts and block shapes, read from a skeleton on the meta device.

The model is built from its config alone (a preset's config, or config.json of a folder or cached hub id) on
torch's meta device, so no weight is read or allocated, and the tuning mode is applied to it as in training, so
trainable and adapter parameters are counted exactly (LoRA on all-linear, freeze's last blocks, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.models.load import resolve_name
from tunelab.models.presets import is_preset, preset_config, preset_tokenizer
from tunelab.models.tuning import apply_tuning, count_parameters


@dataclass
class ModelShape:
    params: int  # every parameter of the tuned model (base + adapters)
    base_params: int  # the base model's own parameters (tied embeddings once)
    trainable: int
    embedding: int  # input embedding parameters (not multiplied per token)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    linear_params: int  # parameters of the blocks' linear layers (what qlora stores in 4 bits)
    trainable_layers: int  # blocks whose weights train (backward must reach the lowest of them)


def model_config(cfg: RunConfig) -> Any:
    name = cfg.model.name_or_path
    if is_preset(name):
        return preset_config(name, preset_tokenizer(name))
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_name(name), revision=cfg.model.revision,
                                          trust_remote_code=cfg.model.trust_remote_code)  # fmt: skip
    except OSError as e:
        raise TunelabError(f"model.name_or_path: cannot read the config of {name!r} for the plan: {e}") from None


def shape_of(cfg: RunConfig) -> ModelShape:
    from transformers import AutoModelForCausalLM

    mc = model_config(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mc)
        base = sum(p.numel() for p in model.parameters())
        embedding = model.get_input_embeddings().weight.numel()
        linear = sum(m.weight.numel() for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings())  # fmt: skip
        tuning = cfg.tuning if cfg.tuning.mode != "qlora" else cfg.tuning.model_copy(update={"mode": "lora"})
        tuned = apply_tuning(model, tuning)
    trainable, total = count_parameters(tuned)
    layers = int(getattr(mc, "num_hidden_layers", 1))
    hidden = int(getattr(mc, "hidden_size", 0))
    heads = int(getattr(mc, "num_attention_heads", 1))
    return ModelShape(
        params=total, base_params=base, trainable=trainable, embedding=embedding, layers=layers, hidden=hidden,
        intermediate=int(getattr(mc, "intermediate_size", 4 * hidden) or 4 * hidden), heads=heads,
        kv_heads=int(getattr(mc, "num_key_value_heads", heads) or heads), vocab=int(mc.vocab_size),
        linear_params=linear, trainable_layers=_trainable_layers(cfg, layers),
    )  # fmt: skip


def _trainable_layers(cfg: RunConfig, layers: int) -> int:
    if cfg.tuning.mode == "freeze":
        f = cfg.tuning.freeze
        return layers if f.train_embeddings else min(f.trainable_layers, layers)
    return layers  # full and adapters: every block has trainable weights (or adapters) to reach
