"""Export a run (or a plain model folder) as `hf`, `merged` or `gguf`.

  hf      RUN/final as trained (a full model, or a LoRA adapter that needs its base), copied unchanged.
  merged  LoRA folded into the base weights (`merge_and_unload`) and saved as a full safetensors model with
          its tokenizer and chat template: loadable anywhere transformers runs, no peft needed.
  gguf    the merged model as one GGUF file (f16 or q8_0) for llama.cpp-style runtimes.
Each export folder gets `export.json` (format, source, file, time, q8_0 fallbacks) which `verify` reads.
Weights are read and written as safetensors only.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.export.gguf import write_gguf
from tunelab.models.load import load_model
from tunelab.models.loader import is_run_dir, load, resolve

EXPORT_FORMATS = ("hf", "merged", "gguf")


def load_source(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32 of a run dir (adapter runs come back as peft models) or of a model folder."""
    p = Path(path)
    if not is_run_dir(p) and not p.is_dir():
        raise TunelabError(f"{p}: not a run directory or a model folder")
    return load(p, like=ModelConfig(dtype="float32"), dtype=torch.float32)


def merged_model(model: Any) -> Any:
    """A plain transformers model: LoRA folded into the weights when `model` is a peft model."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def default_out(source: Path, fmt: str, qtype: str) -> Path:
    if not is_run_dir(source):
        raise TunelabError(f"{source} is not a run directory: pass --out for where to write the export")
    return source / "exports" / (f"gguf-{qtype}" if fmt == "gguf" else fmt)


def export(source: str | Path, fmt: str, out: str | Path | None = None, qtype: str = "f16") -> Path:
    """Write the export folder and return it."""
    from tunelab.models.heads import refuse_head

    src = Path(source)
    refuse_head(src, "export")
    if fmt not in EXPORT_FORMATS:
        raise TunelabError(f"export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    dest = Path(out) if out else default_out(src, fmt, qtype)
    if dest.exists() and any(dest.iterdir()):
        raise TunelabError(f"{dest}: export folder exists and is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"format": fmt, "source": str(src.resolve())}
    if fmt == "hf":
        final = src / "final" if is_run_dir(src) else src
        shutil.copytree(final, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pkl"))
    else:
        model, tokenizer = load_source(src)
        model = merged_model(model)
        if fmt == "merged":
            model.save_pretrained(dest, safe_serialization=True)
            tokenizer.save_pretrained(dest)
        else:
            name = src.resolve().name
            info.update(write_gguf(model, tokenizer, dest / f"{name}-{qtype}.gguf", qtype, name=name))
            info["file"] = f"{name}-{qtype}.gguf"
            info.pop("path", None)
    info["created_at"] = datetime.now(timezone.utc).isoformat()
    (dest / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return dest


def read_export(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    meta = p / "export.json"
    if not meta.is_file():
        raise TunelabError(f"{p}: not a tunelab export (no export.json); create one with `tunelab export`")
    return json.loads(meta.read_text())


def load_export(path: str | Path, against: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) as a consumer of the export would load it; an hf adapter uses the run's base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p, info = Path(path), read_export(path)
    if info["format"] == "gguf":
        kw = {"gguf_file": info["file"]}
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, **kw)
        return model.eval(), AutoTokenizer.from_pretrained(str(p), **kw)
    tokenizer = AutoTokenizer.from_pretrained(str(p))
    if (p / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(_base_of(Path(against)), str(p)).eval(), tokenizer
    return AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, use_safetensors=True).eval(), tokenizer


def _base_of(run: Path) -> Any:
    """The base model an adapter run was trained on (not the run's own adapter)."""
    if not is_run_dir(run) or resolve(run).adapter is None:
        raise TunelabError(f"{run}: an adapter export is verified against its adapter run (config.yaml + final/)")
    return load_model(resolve(run).base, dtype=torch.float32)
