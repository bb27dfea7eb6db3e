"""Batched generation on the tiny preset: left padding is exact, seeds reproduce, EOS stops."""

from __future__ import annotations

import pytest
import torch

from tunelab.models.generate import DecodingConfig, encode_prompt, generate, generate_ids, render_prompt
from tunelab.models.presets import build_preset

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "A somewhat longer question about a great many things, really?"}],
    "raw text prompt",
]


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny", seed=0)


def test_render_prompt_uses_chat_template_with_generation_prompt(tiny) -> None:
    _, tok = tiny
    text = render_prompt(tok, PROMPTS[0])
    assert text == "<|bos|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ids = encode_prompt(tok, PROMPTS[0])
    assert ids.count(tok.bos_token_id) == 1  # the template's BOS, not a second one from the tokenizer
    assert encode_prompt(tok, "raw")[0] == tok.bos_token_id


def test_batched_left_padded_equals_one_by_one(tiny) -> None:
    model, tok = tiny
    d = DecodingConfig(max_new_tokens=12, batch_size=4)
    batched = generate_ids(model, tok, PROMPTS, d, progress=False)
    single = [generate_ids(model, tok, [p], d, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert all(0 < len(r) <= 12 for r in batched)
    assert len({tuple(r) for r in batched}) > 1  # different prompts, different continuations
    texts = generate(model, tok, PROMPTS, d, progress=False)
    assert texts == [tok.decode(r, skip_special_tokens=True) for r in batched]


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny) -> None:
    model, tok = tiny
    state = torch.random.get_rng_state()
    s1 = generate_ids(
        model, tok, PROMPTS[:2], DecodingConfig(max_new_tokens=16, temperature=1.0, seed=1), progress=False
    )
    s1b = generate_ids(
        model, tok, PROMPTS[:2], DecodingConfig(max_new_tokens=16, temperature=1.0, seed=1), progress=False
    )
    s2 = generate_ids(
        model, tok, PROMPTS[:2], DecodingConfig(max_new_tokens=16, temperature=1.0, seed=2), progress=False
    )
    assert s1 == s1b and s1 != s2
    greedy = generate_ids(model, tok, PROMPTS[:2], DecodingConfig(max_new_tokens=16), progress=False)
    assert greedy != s1
    assert torch.equal(torch.random.get_rng_state(), state)


def test_stops_at_eos_and_respects_max_new_tokens(tiny) -> None:
    model, tok = tiny
    # Replace the head with one whose bias forces a fixed token: first a normal byte, then EOS.
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    forced = build_preset("tiny", seed=0)[0]
    forced.lm_head = head
    x = tok.convert_tokens_to_ids("x")
    with torch.no_grad():
        head.bias.zero_()
        head.bias[x] = 10.0
    assert generate_ids(forced, tok, PROMPTS, DecodingConfig(max_new_tokens=5), progress=False) == [[x] * 5] * 4
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 10.0
    assert generate_ids(forced, tok, PROMPTS, DecodingConfig(max_new_tokens=5), progress=False) == [[]] * 4
