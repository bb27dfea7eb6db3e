"""Write a Llama-architecture Hugging Face model as a GGUF file (f16 or q8_0) with its tokenizer.

Tensor names and metadata follow llama.cpp's `convert_hf_to_gguf.py` for `LlamaForCausalLM`: q_proj and
k_proj rows are permuted from HF's half-split RoPE layout to GGUF's interleaved one (readers undo it),
1-D tensors (norms) stay float32, and a tied output head is left out (readers tie it back). q8_0 needs
rows that are a multiple of its 32-value block; other tensors fall back to f16, as llama.cpp does, and
the fallbacks are reported.

Tokenizers: a byte-level BPE (GPT-2 style, like the tiny presets) is written as `gpt2`; a byte-fallback
BPE in sentencepiece style (Llama 2, llama2.c's stories models) as `llama`, with spaces spelled `▁` as
llama.cpp expects. Other tokenizer kinds are refused rather than written wrong. Merges are written in
rank order so a reader rebuilds the same BPE; `verify` checks that the tokenizer read back from the GGUF
gives the same ids as the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.errors import TunelabError

GGUF_TYPES = ("f16", "q8_0")


def write_gguf(model: Any, tokenizer: Any, path: Path, qtype: str = "f16", name: str = "model") -> dict[str, Any]:
    """Write `path`; returns a summary (tensor count, which tensors fell back to f16)."""
    import gguf

    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise TunelabError(f"GGUF export supports Llama-architecture models; this one is {cfg.model_type!r}")
    if qtype not in GGUF_TYPES:
        raise TunelabError(f"GGUF type {qtype!r}: expected one of {', '.join(GGUF_TYPES)}")
    writer = gguf.GGUFWriter(str(path), "llama")
    _write_hparams(writer, cfg, name, qtype)
    _write_tokenizer(writer, tokenizer)
    fallback = _write_tensors(writer, model, cfg, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": str(path), "type": qtype, "f16_fallback": fallback}


def _write_hparams(w: Any, cfg: Any, name: str, qtype: str) -> None:
    import gguf

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise TunelabError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not supported yet")
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    w.add_file_type(ftype)


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF (rotate-half) rows -> GGUF (interleaved) rows, as llama.cpp's converter does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


TENSOR_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")  # model.layers.{i}.{module path}.weight
    if parts[:2] == ["model", "layers"]:
        module = ".".join(parts[3:-1])
        if module in TENSOR_NAMES and parts[-1] == "weight":
            return f"blk.{parts[2]}.{TENSOR_NAMES[module]}.weight"
    raise TunelabError(f"GGUF export: no GGUF name for tensor {hf!r} (biases and extra modules are unsupported)")


def _write_tensors(w: Any, model: Any, cfg: Any, qtype: str) -> list[str]:
    import gguf

    fallback = []
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf, t in model.state_dict().items():
        if hf == "lm_head.weight" and tied:
            continue
        name = _gguf_name(hf)
        t = t.detach().float().cpu()
        if name.endswith("attn_q.weight"):
            t = _permute(t, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        data = t.numpy()
        if data.ndim == 1:
            w.add_tensor(name, data.astype(np.float32))
        elif qtype == "q8_0" and data.shape[-1] % 32 == 0:
            w.add_tensor(
                name,
                gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )
        else:
            if qtype == "q8_0":
                fallback.append(name)
            w.add_tensor(name, data.astype(np.float16))
    return fallback


def _write_tokenizer(w: Any, tokenizer: Any) -> None:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    bpe = spec["model"]
    if bpe.get("type") != "BPE":
        raise TunelabError(f"GGUF export: tokenizer model {bpe.get('type')!r} is not supported (BPE only)")
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))
    if not byte_level and not bpe.get("byte_fallback"):
        raise TunelabError("GGUF export: only byte-level or byte-fallback BPE tokenizers are supported")
    vocab = tokenizer.get_vocab()
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for tok, i in vocab.items():
        tokens[i] = tok
    special = set(tokenizer.all_special_ids) | {
        int(i) for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in bpe.get("merges", [])]
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n)]
    if byte_level:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
    else:  # sentencepiece style: llama.cpp spells spaces as U+2581 and marks <0xNN> tokens as BYTE
        w.add_tokenizer_model("llama")
        tokens = [t if i in special else t.replace(" ", "\u2581") for i, t in enumerate(tokens)]
        pairs = [(a.replace(" ", "\u2581"), b.replace(" ", "\u2581")) for a, b in pairs]
        types = [
            gguf.TokenType.BYTE if t.startswith("<0x") and len(t) == 6 else ty
            for t, ty in zip(tokens, types, strict=True)
        ]
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([-float(i) for i in range(n)])  # BPE has no scores; rank order keeps readers' fallbacks sane
    w.add_token_merges([f"{a} {b}" for a, b in pairs])
    for attr, add in (
        ("bos_token_id", w.add_bos_token_id),
        ("eos_token_id", w.add_eos_token_id),
        ("unk_token_id", w.add_unk_token_id),
        ("pad_token_id", w.add_pad_token_id),
    ):
        if getattr(tokenizer, attr, None) is not None:
            add(int(getattr(tokenizer, attr)))
    adds_bos = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    w.add_add_bos_token(bool(adds_bos))
    w.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)
