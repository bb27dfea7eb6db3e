"""Export a run (or a plain model folder) as `hf`, `merged` or `gguf`.

  hf      RUN/final as trained (a full model, or a LoRA adapter that needs its base), copied unchanged.
  merged  LoRA folded into the base weights (`merge_and_unload`) and saved as a full safetensors model with
          its tokenizer and chat template: loadable anywhere transformers runs, no peft needed.
  gguf    the merged model as one GGUF file for llama.cpp-style runtimes, with an Ollama Modelfile: the
          types the gguf package writes (tunelab.export.gguf), or llama.cpp's K-quants and converter
          (tunelab.export.llamacpp).
Every export folder gets `export.json` (format, source, file, type, what was written and how) which
`verify` reads, and a model card (README.md) filled from the run. The folder is built under a temporary
name beside it and renamed into place at the end, so a failed export leaves nothing behind.
Weights are read and written as safetensors only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ModelConfig, load_config
from tunelab.errors import TunelabError
from tunelab.eval.card import write_export_card
from tunelab.export import llamacpp
from tunelab.export.gguf import GGUF_TYPES, write_gguf
from tunelab.export.modelfile import write_modelfile
from tunelab.models.heads import refuse_head
from tunelab.models.load import load_model
from tunelab.models.loader import is_run_dir, load, resolve

EXPORT_FORMATS = ("hf", "merged", "gguf")
CONVERTERS = ("tunelab", "llama.cpp")


def load_source(path: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32 of a run dir (adapter runs come back as peft models) or of a model folder."""
    p = Path(path)
    if not is_run_dir(p) and not p.is_dir():
        raise TunelabError(f"{p}: not a run directory or a model folder")
    # eager attention: every architecture has it (Gemma 2 has no sdpa path), and an export needs no speed
    return load(p, like=ModelConfig(dtype="float32", attn_implementation="eager"), dtype=torch.float32)


def merged_model(model: Any) -> Any:
    """A plain transformers model: LoRA folded into the weights when `model` is a peft model."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def default_out(source: Path, fmt: str, qtype: str) -> Path:
    if not is_run_dir(source):
        raise TunelabError(f"{source} is not a run directory: pass --out for where to write the export")
    return source / "exports" / (f"gguf-{qtype}" if fmt == "gguf" else fmt)


def run_config(source: Path) -> Any | None:
    """The run's config (for the Modelfile's system prompt and sampling), None for a model folder."""

    if not is_run_dir(source):
        return None
    try:
        return load_config(source / "config.yaml")
    except TunelabError:  # written by another tunelab version: the Modelfile goes without run settings
        return None


def _check_args(src: Path, fmt: str, qtype: str, converter: str) -> None:

    refuse_head(src, "export")
    if fmt not in EXPORT_FORMATS:
        raise TunelabError(f"export format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "gguf" and qtype not in GGUF_TYPES + llamacpp.LLAMA_CPP_TYPES:
        raise TunelabError(f"GGUF type {qtype!r}: tunelab writes {', '.join(GGUF_TYPES)}; with llama.cpp also "
                           f"{', '.join(llamacpp.LLAMA_CPP_TYPES)}")  # fmt: skip
    if converter not in CONVERTERS:
        raise TunelabError(f"GGUF converter {converter!r}: expected one of {', '.join(CONVERTERS)}")


def export(source: str | Path, fmt: str, out: str | Path | None = None, qtype: str = "f16", *,
           converter: str = "tunelab", llama_cpp: str | Path | None = None, modelfile: bool = True) -> Path:  # fmt: skip
    """Write the export folder and return it (nothing is left behind when it fails)."""
    src = Path(source)
    _check_args(src, fmt, qtype, converter)
    dest = Path(out) if out else default_out(src, fmt, qtype)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TunelabError(f"{dest}: export folder exists and is not empty")
    tools = _tools_for(fmt, qtype, converter, llama_cpp)
    with staging(dest) as tmp:
        info: dict[str, Any] = {"format": fmt, "source": str(src.resolve())}
        if fmt == "hf":
            final = src / "final" if is_run_dir(src) else src
            shutil.copytree(final, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pkl"))
        else:
            model, tokenizer = load_source(src)
            model = merged_model(model)
            if fmt == "merged":
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            else:
                info.update(_gguf(model, tokenizer, tmp, src.resolve().name, qtype, converter, tools))
                if modelfile:
                    info["modelfile"] = write_modelfile(tmp, info["file"], tokenizer, run_config(src))
        info["created_at"] = datetime.now(timezone.utc).isoformat()
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")

        write_export_card(tmp)
    return dest


@contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A temporary folder beside `dest`, renamed to `dest` on success; removed (with any parent folders
    it had to create) on failure."""
    created = [p for p in reversed(dest.parents) if not p.exists()]  # outermost first
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            dest.rmdir()  # empty: checked before the export started
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:  # not empty: something else wrote there meanwhile
                break
        raise


def _needs_quantize(qtype: str, converter: str) -> bool:
    """Whether llama-quantize makes this type (the writer, tunelab's or llama.cpp's, cannot)."""
    own = GGUF_TYPES if converter == "tunelab" else llamacpp.CONVERT_OUTTYPES
    return qtype not in own


def _tools_for(fmt: str, qtype: str, converter: str, llama_cpp: str | Path | None) -> llamacpp.Tools | None:
    """llama.cpp's tools when this export needs them, checked before any work is done."""
    needs_quantize = _needs_quantize(qtype, converter)
    if fmt != "gguf" or (converter == "tunelab" and not needs_quantize):
        return None
    tools = llamacpp.find_tools(llama_cpp)
    if converter == "llama.cpp":
        llamacpp.require(tools.convert, llamacpp.CONVERT, "--gguf-converter llama.cpp", tools, GGUF_TYPES)
    if needs_quantize:
        llamacpp.require(tools.quantize, llamacpp.QUANTIZE, f"GGUF type {qtype}", tools, GGUF_TYPES)
    return tools


def _gguf(model: Any, tokenizer: Any, tmp: Path, name: str, qtype: str, converter: str,
          tools: llamacpp.Tools | None) -> dict[str, Any]:  # fmt: skip
    """Write tmp/NAME-TYPE.gguf: with tunelab's writer, or llama.cpp's converter, then llama.cpp's quantizer."""
    file = f"{name}-{qtype}.gguf"
    quantize = _needs_quantize(qtype, converter)
    first = tmp / (".unquantized.gguf" if quantize else file)
    commands: list[list[str]] = []
    if converter == "tunelab":
        info = write_gguf(model, tokenizer, first, "f32" if quantize else qtype, name=name)
    else:
        assert tools is not None and tools.convert is not None
        merged = tmp / ".merged"
        model.save_pretrained(merged, safe_serialization=True)
        tokenizer.save_pretrained(merged)
        commands.append(llamacpp.convert_command(tools.convert, merged, first, "f32" if quantize else qtype))
        llamacpp.run(commands[-1])
        shutil.rmtree(merged)
        info = read_gguf_summary(first)
    if quantize:
        assert tools is not None and tools.quantize is not None
        commands.append(llamacpp.quantize_command(tools.quantize, first, tmp / file, qtype))
        llamacpp.run(commands[-1])
        first.unlink()
    return {**info, "type": qtype, "file": file, "converter": converter, "llama_cpp_commands": commands}


def read_gguf_summary(path: Path) -> dict[str, Any]:
    """Architecture and tokenizer as a GGUF file (written by llama.cpp) states them."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def text(key: str) -> str | None:
        field = reader.get_field(key)
        return bytes(field.parts[field.data[0]]).decode() if field else None

    return {"architecture": text("general.architecture"), "model_type": None, "tokenizer": text("tokenizer.ggml.model"),
            "pre_tokenizer": text("tokenizer.ggml.pre"), "pre_tokenizer_from": "llama.cpp's converter"}  # fmt: skip


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
