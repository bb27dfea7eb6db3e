"""Validate a LoRA adapter folder before it is loaded, so a load is all-or-nothing.

peft registers an adapter's config and injects its layers *before* it copies the weights, and PyTorch
copies the tensors that fit before it reports the ones that do not. So a bad adapter that reaches peft
leaves state behind: half-loaded layers, a taken name, or (when it is the first adapter) LoRA layers
injected into the served base model. Everything that can be checked without loading is checked here
first, and a failure is a `TunelabError` naming the file and what is wrong (the admin route's 400):

- adapter_config.json is JSON, a LoRA config, with an integer rank `r`;
- adapter_model.safetensors has a readable header and is not truncated (its header's tensor extents
  fit in the file), and every tensor's dtype/shape/extent agree;
- each lora_A is [r, in_features] and each lora_B is [out_features, r], with r the config's rank (or a
  rank of its rank_pattern), and in/out the base model's own module's, which must exist.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_PREFIX = "base_model.model."


def validate_adapter(folder: Path, base_model: Any | None) -> None:
    """Raise TunelabError when `folder` cannot be loaded cleanly onto `base_model` (None: files only)."""
    ranks = _config_ranks(folder / "adapter_config.json")
    tensors = read_safetensors_header(folder / "adapter_model.safetensors")
    modules = _base_modules(base_model) if base_model is not None else None
    for name, (_, shape) in tensors.items():
        _check_tensor(folder, name, shape, ranks, modules)


def _config_ranks(path: Path) -> set[int]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TunelabError(f"{path}: not a readable JSON adapter config ({e})") from None
    if not isinstance(cfg, dict) or str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise TunelabError(f"{path}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters are served")
    r = cfg.get("r")
    if not isinstance(r, int) or r < 1:
        raise TunelabError(f"{path}: field r: expected a positive integer rank, got {r!r}")
    pattern = cfg.get("rank_pattern") or {}
    return {r, *(v for v in pattern.values() if isinstance(v, int))}


def read_safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) from a safetensors file whose every tensor lies within the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TunelabError(f"{path}: truncated ({size} bytes; not even a header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise TunelabError(f"{path}: truncated (header says {n} bytes of header, file has {size - 8})")
            header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TunelabError(f"{path}: unreadable safetensors header ({e})") from None
    header.pop("__metadata__", None)
    data, out = size - 8 - n, {}
    for name, t in header.items():
        dtype, shape, (start, end) = t["dtype"], t["shape"], t["data_offsets"]
        expected = _DTYPE_BYTES.get(dtype, 0) * _numel(shape)
        if end > data:
            raise TunelabError(f"{path}: truncated (tensor {name} ends at byte {end}, the data has {data})")
        if expected and end - start != expected:
            raise TunelabError(f"{path}: tensor {name}: {end - start} bytes for {dtype} {shape} ({expected} expected)")
        out[name] = (dtype, shape)
    return out


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _base_modules(model: Any) -> dict[str, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name: getattr(m, "base_layer", m) for name, m in base.named_modules()}


def _check_tensor(folder: Path, name: str, shape: list[int], ranks: set[int], modules: dict[str, Any] | None) -> None:
    for part, rank_dim in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
        if not name.endswith(part):
            continue
        where = f"{folder}: tensor {name}"
        if len(shape) != 2 or shape[rank_dim] not in ranks:
            raise TunelabError(f"{where} has shape {shape}; adapter_config.json says rank {sorted(ranks)}")
        if modules is None:
            return
        path = name[len(_PREFIX) : -len(part)] if name.startswith(_PREFIX) else name[: -len(part)]
        module = modules.get(path)
        if module is None:
            raise TunelabError(f"{where}: the served base model has no module {path}")
        want = getattr(module, "in_features", None) if rank_dim == 0 else getattr(module, "out_features", None)
        if want is not None and shape[1 - rank_dim] != want:
            side = "in" if rank_dim == 0 else "out"
            raise TunelabError(f"{where} has shape {shape}; the base model's {path} has {side}_features {want}")
