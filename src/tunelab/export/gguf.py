"""Write a Hugging Face causal LM as one GGUF file, in any weight type the `gguf` package can produce.

Architectures (ARCHS) are the ones llama.cpp and transformers' GGUF reader share and that tiny models can be
built for from config: Llama, Mistral (written as `llama`, as llama.cpp's converter does), Qwen2, Qwen3 and
Gemma 2/3. Metadata keys and tensor handling follow llama.cpp's `convert_hf_to_gguf.py`: names come from
gguf's own tensor map, q/k rows of `llama` models are permuted from HF's rotate-half layout to GGUF's
interleaved one, Gemma's norm weights are stored as 1 + w, 1-D tensors stay float32 and a tied output
head is left out (readers tie it back). Config features a GGUF cannot carry for llama.cpp (RoPE scaling,
sliding windows on every layer) are refused, not dropped.

Weight types (GGUF_TYPES, from gguf_types.py): f32, f16, bf16 and the block quantizations gguf's numpy code implements
(q8_0, q5_1, q5_0, q4_1, q4_0). A tensor whose rows are not a multiple of the 32-value block falls back to
f16, as in llama.cpp, and in the 4- and 5-bit types the output head (the tied embedding when there is no
separate head) is kept at q8_0, as llama-quantize keeps it at q6_K: it is the tensor quantization hurts
most. Both are reported. K-quants need llama.cpp's quantizer (tunelab.export.llamacpp).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.export.gguf_types import GGUF_TYPES, TYPES
from tunelab.export.gguf_vocab import write_tokenizer

LOW_BIT = ("q5_1", "q5_0", "q4_1", "q4_0")  # types whose output head is kept at q8_0


@dataclass(frozen=True)
class Arch:
    """How one transformers architecture is written for llama.cpp."""

    gguf: str  # llama.cpp's architecture name
    permute_qk: bool = False  # llama.cpp's `llama` graph applies RoPE to interleaved pairs
    norm_shift: float = 0.0  # Gemma's RMSNorm scales by (1 + w); llama.cpp stores 1 + w
    extra: Callable[[Any, Any], None] | None = None  # architecture-specific metadata
    tied_head_key: str = "tie_word_embeddings"


def _layer_pattern(cfg: Any, every: int) -> None:
    """llama.cpp fixes Gemma's layer pattern: every `every`-th layer global, the others sliding-window."""
    want = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(cfg.num_hidden_layers)]
    _require(list(cfg.layer_types) == want, "layer_types", f"a global layer every {every} (llama.cpp's fixed pattern)")


def _gemma2(w: Any, cfg: Any) -> None:
    _require(cfg.query_pre_attn_scalar == cfg.head_dim, "query_pre_attn_scalar", "equal to head_dim")
    _layer_pattern(cfg, 2)
    w.add_attn_logit_softcapping(float(cfg.attn_logit_softcapping or 0.0))
    w.add_final_logit_softcapping(float(cfg.final_logit_softcapping or 0.0))
    w.add_sliding_window(cfg.sliding_window)


def _gemma3(w: Any, cfg: Any) -> None:
    _require(cfg.query_pre_attn_scalar == cfg.head_dim, "query_pre_attn_scalar", "equal to head_dim")
    _require(cfg.attn_logit_softcapping is None, "attn_logit_softcapping", "unset (llama.cpp's gemma3 has none)")
    _layer_pattern(cfg, 6)
    local = (cfg.rope_parameters or {}).get("sliding_attention", {}).get("rope_theta")
    _require(
        local in (None, 10000.0), "rope_parameters.sliding_attention.rope_theta", "10000 (llama.cpp's fixed value)"
    )
    if cfg.final_logit_softcapping:
        w.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
    w.add_sliding_window(cfg.sliding_window)


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", permute_qk=True),
    "mistral": Arch("llama", permute_qk=True),  # llama.cpp converts MistralForCausalLM as `llama`
    "qwen2": Arch("qwen2"),
    "qwen3": Arch("qwen3"),
    "gemma2": Arch("gemma2", norm_shift=1.0, extra=_gemma2),
    "gemma3_text": Arch("gemma3", norm_shift=1.0, extra=_gemma3),
}


def _require(ok: bool, field: str, expected: str) -> None:
    if not ok:
        raise TunelabError(f"GGUF export: config.{field} must be {expected} for llama.cpp to run this model the same")


def write_gguf(model: Any, tokenizer: Any, path: Path, qtype: str = "f16", name: str = "model") -> dict[str, Any]:
    """Write `path`; returns a summary (architecture, tokenizer, which tensors got another type and why)."""
    import gguf

    cfg = model.config
    arch = ARCHS.get(getattr(cfg, "model_type", ""))
    if arch is None:
        raise TunelabError(
            f"GGUF export supports {', '.join(sorted(ARCHS))}; this model is {cfg.model_type!r} "
            "(llama.cpp's convert_hf_to_gguf.py covers more: `--gguf-converter llama.cpp`)"
        )
    if qtype not in GGUF_TYPES:
        raise TunelabError(f"GGUF type {qtype!r}: expected one of {', '.join(GGUF_TYPES)}")
    writer = gguf.GGUFWriter(str(path), arch.gguf)
    try:
        notes = _write_hparams(writer, cfg, arch, name, qtype)
        vocab = write_tokenizer(writer, tokenizer, cfg.vocab_size)
        types = _write_tensors(writer, model, cfg, arch, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {"architecture": arch.gguf, "model_type": cfg.model_type, "type": qtype, **vocab, **types, "notes": notes}


def _write_hparams(w: Any, cfg: Any, arch: Arch, name: str, qtype: str) -> list[str]:
    import gguf

    notes = _refuse_unsupported(cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if arch.gguf == "llama":
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(cfg.vocab_size)
    w.add_rope_freq_base(float(_rope_theta(cfg)))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if arch.extra:
        arch.extra(w, cfg)
    w.add_file_type(getattr(gguf.LlamaFileType, TYPES[qtype][1]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return notes


def _rope_theta(cfg: Any) -> float:
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope = rope.get("full_attention", rope)  # Gemma 3: per layer type; the global layers use this one
    return rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))


def _refuse_unsupported(cfg: Any) -> list[str]:
    """Config features llama.cpp would run differently are refused; harmless omissions become notes."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    for part in [rope, *[v for v in rope.values() if isinstance(v, dict)]]:
        if part.get("rope_type", "default") != "default":
            raise TunelabError(
                f"GGUF export: RoPE scaling {part['rope_type']!r} is not written by tunelab yet "
                "(llama.cpp's convert_hf_to_gguf.py handles it: `--gguf-converter llama.cpp`)"
            )
    if getattr(cfg, "use_sliding_window", False):
        raise TunelabError(
            "GGUF export: config.use_sliding_window is true; llama.cpp's qwen2/qwen3 have no sliding window"
        )
    notes = []
    if cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None):
        notes.append(
            f"sliding_window {cfg.sliding_window} is not in the file (llama.cpp's llama architecture has none, as with "
            "its own converter): outputs match up to that many tokens of context"
        )
    return notes


def _permute(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF (rotate-half) rows -> GGUF (interleaved) rows, as llama.cpp's converter does."""
    return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def _gguf_names(cfg: Any, arch: Arch) -> Any:
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf)
    return gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)


def _write_tensors(w: Any, model: Any, cfg: Any, arch: Arch, qtype: str) -> dict[str, list[str]]:
    names, tied = _gguf_names(cfg, arch), bool(getattr(cfg, "tie_word_embeddings", False))
    fallback, kept = [], []
    for hf, t in model.state_dict().items():
        if hf == "lm_head.weight" and tied:
            continue
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunelabError(f"GGUF export: tensor {hf!r} has no llama.cpp name for architecture {arch.gguf!r}")
        data = _prepare(t, name, cfg, arch)
        head = name == "output.weight" or (tied and name == "token_embd.weight")
        chosen = "q8_0" if head and qtype in LOW_BIT else qtype
        written = _add(w, name, data, chosen)
        if written == "f16" and chosen not in ("f16", "f32", "bf16"):
            fallback.append(name)
        elif chosen != qtype:
            kept.append(name)
    return {"f16_fallback": fallback, "q8_0_head": kept}


def _prepare(t: torch.Tensor, name: str, cfg: Any, arch: Arch) -> np.ndarray:
    t = t.detach().float().cpu()
    if arch.permute_qk and ".attn_q." in name:
        t = _permute(t, cfg.num_attention_heads)
    elif arch.permute_qk and ".attn_k." in name:
        t = _permute(t, cfg.num_key_value_heads)
    if arch.norm_shift and name.endswith("norm.weight"):
        t = t + arch.norm_shift
    return t.numpy()


def _add(w: Any, name: str, data: np.ndarray, qtype: str) -> str:
    """Add one tensor; returns the type it was written in (1-D stays f32; unaligned rows fall back to f16)."""
    import gguf

    if data.ndim == 1 or qtype == "f32":
        w.add_tensor(name, data.astype(np.float32))
        return "f32"
    ggml = getattr(gguf.GGMLQuantizationType, TYPES[qtype][0])
    if qtype != "f16" and data.shape[-1] % gguf.GGML_QUANT_SIZES[ggml][0] == 0:
        w.add_tensor(name, gguf.quants.quantize(data, ggml), raw_dtype=ggml)
        return qtype
    w.add_tensor(name, data.astype(np.float16))
    return "f16"
