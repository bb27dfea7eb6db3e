"""Tiny Llama-architecture models built from config, with a byte-level tokenizer that needs no download.

Presets make tests and the offline quickstart possible: the same seed gives the same weights. The
tokenizer maps each UTF-8 byte to one token (so it can encode anything) plus a few special tokens, and
carries a ChatML chat template whose end-of-turn token is also the EOS, so a model trained on it stops;
the template can also show tools, tool calls and tool results (see CHATML_TEMPLATE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunelab.data.quickstart_task import make_splits
from tunelab.data.tokenize import TOOL_CALLS_JINJA

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|im_end|>", "<|im_start|>"]
# With tools, the Hermes/Qwen convention: the functions are listed in the system turn inside <tools></tools>,
# an assistant's calls follow its content as <tool_call>{json}</tool_call>, and a result is a `tool` turn
# inside <tool_response></tool_response>. A conversation without tools renders exactly as plain ChatML.
TOOLS_SYSTEM = (
    "# Tools\n\nYou may call one or more functions. Their signatures are within <tools></tools>:\n<tools>"
    "{% for t in tools %}{{ '\\n' }}{{ t | tojson }}{% endfor %}{{ '\\n' }}</tools>\n\nFor each call, write a JSON object with the "
    "function name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
CHATML_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% if tools %}<|im_start|>system\n{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] }}\n\n{% endif %}" + TOOLS_SYSTEM + "<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if tools and loop.first and m['role'] == 'system' %}"  # already written with the tools
    "{% elif m['role'] == 'tool' %}<|im_start|>tool\n<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}" + TOOL_CALLS_JINJA + "<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# hidden, layers, heads, kv heads, intermediate. Sizes chosen for: tests (tiny), the ~4M and ~30M
# benchmark models, and a quickstart model that learns its task in minutes on two cores.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=176,
    ),
    "tiny-1m": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, intermediate_size=352
    ),
    "tiny-4m": dict(
        hidden_size=256,
        num_hidden_layers=5,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=688,
    ),
    "tiny-30m": dict(
        hidden_size=512,
        num_hidden_layers=9,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1376,
    ),
}


def is_preset(name: str) -> bool:
    return name in PRESETS


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens + specials; adds BOS like Llama tokenizers do; EOS is the ChatML end of turn."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return _wrap(tok)


def bpe_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained at build time on text that ships with tunelab (the general-text probe set and
    the quickstart task's templates): whole words become single tokens, so a model trained from scratch
    learns word-level tasks in minutes instead of first composing words from bytes. Deterministic: the same
    corpus and settings give the same merges (checked by a test)."""
    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(_bpe_corpus(), trainer=trainer)
    return _wrap(tok)


def _bpe_corpus() -> list[str]:
    probe = Path(__file__).resolve().parents[1] / "assets" / "general_text.jsonl"
    texts = [json.loads(line)["text"] for line in probe.read_text().splitlines() if line.strip()]
    for rows in make_splits(seed=12345).values():  # a different seed from the quickstart's own splits
        texts += [m["content"] for r in rows for m in r["messages"]]
    return texts


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    tok.decoder = decoders.ByteLevel()
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
        model_max_length=1 << 30,  # length limits are the data config's job, not a tokenizer warning
    )


TOKENIZERS = {"byte": byte_tokenizer, "bpe": bpe_tokenizer}
PRESET_TOKENIZER = {"tiny-1m": "bpe"}  # the quickstart's model; the others stay byte-level


def preset_tokenizer(name: str) -> PreTrainedTokenizerFast:
    return TOKENIZERS[PRESET_TOKENIZER.get(name, "byte")]()


def preset_config(name: str, tokenizer: Any, max_positions: int = 4096) -> LlamaConfig:
    dims = PRESETS[name]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        **dims,
    )


def build_preset(
    name: str, seed: int = 0, attn_implementation: str = "sdpa"
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The preset model, initialized from `seed` without touching the global RNG."""
    tokenizer = preset_tokenizer(name)
    config = preset_config(name, tokenizer)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
