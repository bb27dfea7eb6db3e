"""Tiny models of each architecture the GGUF writer supports, built from config with the byte tokenizer.

Weights are drawn wider than the usual 0.02 so the models have clear preferences (a trained model does; a
freshly initialised one is close to uniform and its greedy choices are coin flips under any rounding).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tunelab.models.presets import byte_tokenizer

# Shapes: hidden 64, 2 layers, GQA where the architecture allows; head_dim where transformers' GGUF reader
# assumes the config class default (Qwen3 128, Gemma 256: it does not read key_length for them).
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
ARCH_CONFIGS: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(head_dim=16, sliding_window=4096)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict()),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=128, num_attention_heads=2, num_key_value_heads=1)),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, dict(head_dim=256, num_attention_heads=2, num_key_value_heads=1)),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, dict(head_dim=256, num_attention_heads=2, num_key_value_heads=1)),
}


def tiny_model(arch: str, seed: int = 0, scale: float = 0.15) -> tuple[Any, Any]:
    config_cls, model_cls, extra = ARCH_CONFIGS[arch]
    tok = byte_tokenizer()
    # vocab padded past the tokenizer as real models do (and transformers gives a tokenizer saved beside a
    # qwen2 config an extra <|endoftext|>, which needs a row)
    cfg = config_cls(**{**SMALL, **extra}, vocab_size=320, max_position_embeddings=512,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2:
                    p.normal_(0, scale)
                elif "norm" in name:  # norms and biases stay near their init, with some spread
                    p.add_(torch.randn_like(p) * 0.1)
                else:
                    p.normal_(0, 0.05)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def _corpus() -> list[str]:
    import json
    from pathlib import Path

    import tunelab

    probe = Path(tunelab.__file__).parent / "assets" / "general_text.jsonl"
    return [json.loads(line)["text"] for line in probe.read_text().splitlines() if line.strip()]


def trained_model(arch: str, steps: int = 60, seed: int = 0) -> tuple[Any, Any]:
    """`tiny_model`, then `steps` AdamW steps of next-byte prediction on tunelab's general-text probe set:
    a model with a trained model's confident predictions, which is what quantization is measured against."""
    model, tok = tiny_model(arch, seed, scale=0.02)
    texts = _corpus()
    ids = [tok(t)["input_ids"][:96] for t in texts]
    batch = torch.tensor([x + [tok.pad_token_id] * (96 - len(x)) for x in ids])
    labels = batch.masked_fill(batch == tok.pad_token_id, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(batch), (8,), generator=gen)
        loss = model(input_ids=batch[rows], labels=labels[rows]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok
