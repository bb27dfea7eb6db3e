"""Tuning modes: which parameters of a loaded causal LM train (`tuning.mode`).

`TUNING_MODES` maps each mode to a function `(model, TuningConfig) -> model`; the result may be a peft
wrapper. Non-obvious decisions:
- `freeze` trains the last N decoder blocks and the final norm (it sits after them); with tied
  embeddings, training the head also trains the input embeddings (they are one tensor) and vice versa.
- `qlora` has to quantize at load time, so it is handled by `load_for_tuning`, which needs CUDA and
  bitsandbytes and otherwise fails with a message saying which mode to use instead.
- LoRA `all-linear` is peft's own expansion (every linear layer but the output head).
- A task-head model (`head` = seq | token, tunelab.models.heads) gets peft's SEQ_CLS / TOKEN_CLS task type,
  so its new head trains in full and is saved with the adapter (modules_to_save); the head is excluded
  from `all-linear` (peft excludes it for SEQ_CLS only; for TOKEN_CLS it would wrap it and then fail).
  `freeze` always trains the new head (and an encoder's pooler): a random head cannot stay frozen.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.config import ModelConfig, TuningConfig
from tunelab.errors import TunelabError
from tunelab.models.heads import HEAD_NAMES, PEFT_TASK, TASK_OF
from tunelab.models.load import load_model


def _full(model: nn.Module, cfg: TuningConfig, task: str) -> nn.Module:
    model.requires_grad_(True)
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList as long as config.num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise TunelabError(f"tuning.mode freeze: cannot find the {n} decoder blocks of {type(model).__name__}")


def _freeze(model: Any, cfg: TuningConfig, task: str) -> nn.Module:
    f = cfg.freeze
    layers = decoder_layers(model)
    if f.trainable_layers > len(layers):
        raise TunelabError(
            f"tuning.freeze.trainable_layers: {f.trainable_layers} but the model has only {len(layers)} blocks"
        )
    model.requires_grad_(False)
    if f.trainable_layers:
        for block in list(layers)[len(layers) - f.trainable_layers :]:
            block.requires_grad_(True)
        norm = getattr(getattr(model, "model", None), "norm", None)  # final norm follows the last block
        if isinstance(norm, nn.Module):
            norm.requires_grad_(True)
    if f.train_embeddings:
        model.get_input_embeddings().requires_grad_(True)
    if f.train_head and model.get_output_embeddings() is not None:
        model.get_output_embeddings().requires_grad_(True)
    if task != "CAUSAL_LM":
        from tunelab.models.heads import head_modules

        for module in head_modules(model):
            module.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise TunelabError("tuning.freeze: nothing would train (trainable_layers 0 and no embeddings or head)")
    return model


def _lora_config(cfg: TuningConfig, dora: bool, task: str) -> Any:
    from peft import LoraConfig

    lo = cfg.lora
    return LoraConfig(
        task_type=task,
        exclude_modules=list(HEAD_NAMES) if task != "CAUSAL_LM" else None,
        r=lo.r,
        lora_alpha=lo.alpha,  # type: ignore[arg-type]  # peft annotates int; a float scale works the same
        lora_dropout=lo.dropout,
        target_modules=lo.target_modules,
        use_rslora=lo.rslora,
        use_dora=dora,
    )


def _peft(model: nn.Module, peft_config: Any) -> nn.Module:
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:  # e.g. target modules not found: say which config key to fix
        raise TunelabError(f"tuning: peft could not adapt {type(model).__name__}: {e}") from None


def _adapt(model: nn.Module, cfg: TuningConfig, dora: bool, task: str) -> nn.Module:
    """A fresh adapter, or the one named by tuning.init_adapter made trainable again."""
    if cfg.init_adapter is None:
        return _peft(model, _lora_config(cfg, dora=dora, task=task))
    from peft import PeftModel

    folder = adapter_folder(cfg.init_adapter)
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        raise TunelabError(f"tuning.init_adapter: {folder} does not load onto the base model: {e}") from None


def adapter_folder(path: str) -> Path:
    """The LoRA folder `path` names (an adapter run directory means its final/), checked for its files."""
    p = Path(path).expanduser()
    if (p / "final" / "adapter_config.json").is_file():
        p = p / "final"
    config = p / "adapter_config.json"
    if not config.is_file():
        raise TunelabError(f"tuning.init_adapter: {p} is not a LoRA adapter folder (no adapter_config.json)")
    try:
        kind = json.loads(config.read_text()).get("peft_type")
    except (OSError, ValueError) as e:
        raise TunelabError(f"tuning.init_adapter: {config} is not readable JSON ({e})") from None
    if str(kind).upper() != "LORA":
        raise TunelabError(f"tuning.init_adapter: {config} field peft_type is {kind!r}; expected LORA")
    return p


def _lora(model: nn.Module, cfg: TuningConfig, task: str) -> nn.Module:
    return _adapt(model, cfg, False, task)


def _dora(model: nn.Module, cfg: TuningConfig, task: str) -> nn.Module:
    return _adapt(model, cfg, True, task)


def _qlora(model: nn.Module, cfg: TuningConfig, task: str) -> nn.Module:
    if not getattr(model, "is_loaded_in_4bit", False):
        raise TunelabError("tuning.mode qlora: the base must be loaded 4-bit; load it with load_for_tuning()")
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _adapt(model, cfg, False, task)


def _prefix(model: nn.Module, cfg: TuningConfig, task: str) -> nn.Module:
    from peft import PrefixTuningConfig

    check_head_tuning(model, "prefix", {"SEQ_CLS": "seq", "TOKEN_CLS": "token"}.get(task))
    return _peft(model, PrefixTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens))


def check_head_tuning(model: nn.Module, mode: str, head: str | None) -> None:
    """Refuse a head/mode pair that cannot train right (called before any evaluation)."""
    if mode == "prompt" and head and TASK_OF[head] == "seq" and isinstance(getattr(model, "score", None), nn.Module):
        # A decoder head (`score`) reads the last non-pad token, but prompt tuning hands the model
        # embeddings, not ids, so it reads the last position: padding, for every shorter row of a batch.
        raise TunelabError(f"tuning.mode prompt: {type(model).__name__} scores the last non-pad token, which "
                           "it cannot find under prompt tuning (padding would be scored); "
                           "use lora, dora or ia3")  # fmt: skip
    if mode == "prefix" and head and not takes_past_key_values(model):
        # peft hands a head model its prefix as `past_key_values` and checks the forward signature for that
        # name; transformers >= 5.24 calls the argument `cache`, so peft would fail at the first step.
        raise TunelabError(f"tuning.mode prefix: peft cannot pass a prefix to {type(model).__name__} (its forward "
                           "takes no `past_key_values` in this transformers version); use lora, dora or ia3")  # fmt: skip


def takes_past_key_values(model: nn.Module) -> bool:
    """What peft's prefix tuning of a head model requires: `past_key_values` in the forward of the model or of
    its backbone (the base_model_prefix submodule)."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    forwards = [model.forward] + ([backbone.forward] if isinstance(backbone, nn.Module) else [])
    return any("past_key_values" in inspect.signature(f).parameters for f in forwards)


def _prompt(model: nn.Module, cfg: TuningConfig, task: str) -> nn.Module:
    from peft import PromptTuningConfig

    check_head_tuning(model, "prompt", {"SEQ_CLS": "seq", "TOKEN_CLS": "token"}.get(task))

    return _peft(model, PromptTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens))


def _ia3(model: nn.Module, cfg: TuningConfig, task: str) -> nn.Module:
    from peft import IA3Config

    targets = cfg.ia3_target_modules
    # peft needs the feed-forward subset explicitly when targets are given; the MLP output is the usual one.
    ff = [t for t in targets if "down" in t or "mlp" in t or "fc" in t] if targets else None
    return _peft(model, IA3Config(task_type=task, target_modules=targets, feedforward_modules=ff))


TUNING_MODES: dict[str, Callable[[nn.Module, TuningConfig, str], nn.Module]] = {
    "full": _full,
    "freeze": _freeze,
    "lora": _lora,
    "dora": _dora,
    "qlora": _qlora,
    "prefix": _prefix,
    "prompt": _prompt,
    "ia3": _ia3,
}

PROMPT_LEARNING_MODES = ("prefix", "prompt")


def apply_tuning(model: nn.Module, cfg: TuningConfig, head: str | None = None) -> nn.Module:
    """Mark what trains for `cfg.mode`; returns the (possibly peft-wrapped) model. `head`: seq | token for a
    task-head model (tunelab.models.heads), None for a causal LM."""
    return TUNING_MODES[cfg.mode](model, cfg, PEFT_TASK[head] if head else "CAUSAL_LM")


def load_for_tuning(model_cfg: ModelConfig, tuning: TuningConfig, dtype: torch.dtype | None = None) -> Any:
    """Load the base model the way the tuning mode needs it (4-bit for qlora, as configured otherwise)."""
    if tuning.mode != "qlora":
        return load_model(model_cfg, dtype=dtype)
    if not torch.cuda.is_available():
        raise TunelabError(
            "tuning.mode qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on this machine use "
            "tuning.mode: lora (same adapters, full-precision base)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TunelabError("tuning.mode qlora needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=tuning.quant_type,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = model_cfg.name_or_path
        from tunelab.models.presets import is_preset

        if is_preset(path):  # presets live in memory: save once so from_pretrained can quantize them
            load_model(model_cfg, dtype=compute).save_pretrained(tmp)
            path = tmp
        return AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=bnb,
            dtype=compute,
            device_map={"": 0},
            revision=None if path == tmp else model_cfg.revision,
        )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if getattr(p, "quant_type", None) else 1)  # bnb packs two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def describe_trainable(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    return f"trainable params: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.4f}%)"
