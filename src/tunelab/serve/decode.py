"""One batched decoding loop: left-padded prompts, a KV cache, per-row sampling, stop strings, streaming.

Our own loop rather than `model.generate` because each row of a batch keeps its own OpenAI sampling
parameters (temperature, top_p, seed, stop, max_tokens) and streams its own text, so concurrent requests
with different settings still share every forward pass. Sampling follows the OpenAI API: temperature 0
is greedy; otherwise softmax(logits / T), nucleus-filtered to top_p, drawn from a per-row generator (a
seed makes a request reproducible whatever else shares its batch, up to float noise from padding).
Streaming holds back text that could still become a stop string or is a half-decoded UTF-8 character.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Row:
    """One request inside a batch; `on_delta` gets newly final text (called from the decoding thread)."""

    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None
    is_cancelled: Callable[[], bool] = lambda: False
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None

    def generator(self) -> torch.Generator | None:
        if self.params.seed is None:
            return None
        return torch.Generator().manual_seed(self.params.seed)


def run_batch(model: Any, tokenizer: Any, rows: list[Row], eos_ids: set[int]) -> None:
    """Decode every row to completion; results are left in each row (text, ids, finish_reason)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    width = max(len(r.prompt_ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding: every row's next token lands in the last column
        ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[i, width - len(r.prompt_ids) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    gens = [r.generator() for r in rows]
    cache = DynamicCache()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache).logits[:, -1]
        for _ in range(max(r.params.max_tokens for r in rows)):
            nxt = torch.stack([_sample(logits[i].float(), r.params, gens[i]) for i, r in enumerate(rows)])
            for i, r in enumerate(rows):
                if r.finish_reason is None:
                    _push(r, int(nxt[i]), tokenizer, eos_ids)
            if all(r.finish_reason is not None for r in rows):
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
            positions = positions[:, -1:] + 1
            out = model(
                input_ids=nxt[:, None].to(device),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
            )
            logits = out.logits[:, -1]


def _sample(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    if p.temperature <= 0:
        return logits.argmax()
    probs = torch.softmax(logits.cpu() / p.temperature, dim=-1)
    if p.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < p.top_p  # smallest set whose mass reaches top_p (>= 1 token)
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return torch.multinomial(probs, 1, generator=gen)[0].to(logits.device)


def _push(r: Row, token: int, tokenizer: Any, eos_ids: set[int]) -> None:
    if r.is_cancelled():
        r.finish_reason = "cancelled"
        return
    if token in eos_ids:
        r.finish_reason = "stop"
    else:
        r.ids.append(token)
        r.text = tokenizer.decode(r.ids, skip_special_tokens=True)
        cut = min((i for i in (r.text.find(s) for s in r.params.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            r.text, r.finish_reason = r.text[:cut], "stop"
        elif len(r.ids) >= r.params.max_tokens:
            r.finish_reason = "length"
    _emit(r)


def _emit(r: Row) -> None:
    """Send the text that can no longer change; all of it once the row is finished."""
    end = len(r.text)
    if r.finish_reason is None:
        end -= _holdback(r.text, r.params.stop)
        while end > r.emitted and r.text[end - 1] == "\ufffd":  # an incomplete multi-byte character
            end -= 1
    if end > r.emitted and r.on_delta is not None:
        r.on_delta(r.text[r.emitted : end])
    r.emitted = max(r.emitted, end)


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
