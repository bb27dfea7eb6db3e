"""Batched generation for evaluation: chat template, left padding, KV cache, greedy or seeded sampling.

Prompts are sorted by length before batching (less padding) and results are put back in input order.
Left padding keeps every prompt's last token at the end of the row, so `model.generate` (which uses the
KV cache) continues each prompt right where it stops. Sampling runs inside a forked RNG seeded with
`seed`, so the same seed gives the same outputs and the caller's RNG state is untouched. Generation stops
at the tokenizer's EOS; the returned token ids are cut at the first EOS (which is not included).

`render_prompt` is the one place a conversation becomes prompt text: the template training used
(tunelab.data.tokenize: the model's own, an override, or the documented fallback) with the assistant
generation prompt. A plain string prompt is used as is (a prompt/completion record is not a chat). BOS
is handled as in training: once, from the template or else from the tokenizer's default.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.console import progress as progress_bar
from tunelab.data.tokenize import chat_template_for, prompt_text
from tunelab.errors import TunelabError

Prompt = str | Sequence[Mapping[str, str]]


def render_prompt(tokenizer: Any, prompt: Prompt, template: str | None = None) -> str:
    """Prompt text for generation; `template` is a model.chat_template override (None: the model's own)."""
    if isinstance(prompt, str):
        return prompt
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    return prompt_text(tokenizer, messages, chat_template_for(tokenizer, template))


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    chat_template: str | None = None  # model.chat_template override
    max_prompt_tokens: int | None = None  # longer prompts keep their end (and BOS): data.max_length in evaluation


def encode_prompt(tokenizer: Any, prompt: Prompt, template: str | None = None) -> list[int]:
    """Prompt token ids, with BOS exactly once as tunelab.data.tokenize.Encoder does for training."""
    ids = list(tokenizer(render_prompt(tokenizer, prompt, template), add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:1] != [bos] and tokenizer("a")["input_ids"][:1] == [bos]:
        ids.insert(0, bos)
    return ids


def keep_end(ids: list[int], limit: int | None, tokenizer: Any) -> list[int]:
    """The last `limit` prompt tokens (the question is usually last; generation continues from the end), a
    leading BOS kept; `ids` unchanged when it fits or there is no limit."""
    if limit is None or len(ids) <= limit:
        return ids
    bos = tokenizer.bos_token_id
    head = ids[:1] if bos is not None and ids[:1] == [bos] else []
    return head + ids[len(ids) - (limit - len(head)) :]


def generate_ids(model: Any, tokenizer: Any, prompts: Sequence[Prompt], decoding: DecodingConfig,
                 progress: bool = True) -> list[list[int]]:  # fmt: skip
    """New token ids per prompt, in input order, cut at the first EOS."""
    encoded = [keep_end(encode_prompt(tokenizer, p, decoding.chat_template), decoding.max_prompt_tokens, tokenizer)
               for p in prompts]  # fmt: skip
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[list[int]] = [[] for _ in encoded]
    eos, pad = eos_ids(model, tokenizer), _pad_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = progress_bar(total=len(encoded), desc="generate", unit="prompt", disable=not progress)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            torch.manual_seed(decoding.seed)
            for start in range(0, len(order), decoding.batch_size):
                idx = order[start : start + decoding.batch_size]
                ids, mask = _left_pad([encoded[i] for i in idx], pad)
                new = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=decoding.max_new_tokens,
                    eos_token_id=eos, pad_token_id=pad, **_sampling(decoding),
                )[:, ids.shape[1] :]  # fmt: skip
                for row, i in zip(new.tolist(), idx):
                    out[i] = row[: next((k for k, t in enumerate(row) if t in eos), len(row))]
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return out


def generate(model: Any, tokenizer: Any, prompts: Sequence[Prompt], decoding: DecodingConfig | None = None,
             progress: bool = True) -> list[str]:  # fmt: skip
    """Decoded completions (special tokens removed), in input order."""
    ids = generate_ids(model, tokenizer, prompts, decoding or DecodingConfig(), progress)
    return [tokenizer.decode(row, skip_special_tokens=True) for row in ids]


def single_prompt(tokenizer: Any, prompt: str | None = None, messages: Sequence[Mapping[str, str]] | None = None,
                  chat: bool | None = None) -> Prompt:  # fmt: skip
    """What one request means: `messages`; or `prompt` as one user turn when the tokenizer has a chat template
    (unless chat=False); otherwise the raw prompt, as in pretraining."""
    if messages is None and prompt is None:
        raise TunelabError("generate: give a prompt or messages")
    if chat and getattr(tokenizer, "chat_template", None) is None:
        raise TunelabError("generate: this model's tokenizer has no chat template; use a plain prompt")
    if messages is not None:
        return list(messages)
    assert prompt is not None
    use_chat = chat is not False and getattr(tokenizer, "chat_template", None) is not None
    return [{"role": "user", "content": prompt}] if use_chat else prompt


def stream(model: Any, tokenizer: Any, prompt: Prompt, decoding: DecodingConfig | None = None) -> Iterator[str]:
    """Text pieces of one completion as they are generated (special tokens skipped), stopping at EOS."""
    from transformers import TextIteratorStreamer

    d = decoding or DecodingConfig()
    device = next(model.parameters()).device
    ids = torch.tensor([encode_prompt(tokenizer, prompt, d.chat_template)], device=device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=d.max_new_tokens,
                  eos_token_id=eos_ids(model, tokenizer), pad_token_id=_pad_id(tokenizer), streamer=streamer,
                  **_sampling(d))  # fmt: skip
    torch.manual_seed(d.seed)
    worker = threading.Thread(target=lambda: model.generate(**kwargs), daemon=True)
    worker.start()
    yield from streamer
    worker.join()


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a reply: the model's generation config's (one or a list) and the tokenizer's."""
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = gen if isinstance(gen, list) else [gen]
    return sorted({int(i) for i in [*ids, tokenizer.eos_token_id] if i is not None})


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an EOS token; generation cannot batch")
    return int(pad)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _sampling(d: DecodingConfig) -> dict[str, Any]:
    if d.temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": d.temperature, "top_p": d.top_p, "top_k": None}
