"""What the HTTP layer asks of the engine beyond the first `Engine` protocol, in one place.

The engine grows features (penalties, logprobs, constrained decoding for `response_format`, tool calls,
fair scheduling by tenant, validation of sampling values). The server learns whether the engine it was
given has one from the engine itself: a field of `SamplingParams`, a keyword of `generate` or
`encode_chat`, a `validate` method. A request that needs a missing one gets a 400 naming the field ("not
supported by this server's engine yet"); it is never silently ignored. Neutral values (penalties 0,
`logprobs: false`, `response_format: text`) are always accepted, which is what OpenAI clients send.

The interface looked for (what the engine work provides):
  SamplingParams fields  presence_penalty, frequency_penalty (float), logprobs (bool), top_logprobs (int),
                         response_format (OpenAI's dict), tools (list of OpenAI tool dicts), tool_choice
  engine.validate(params)             raises TunelabError for values that cannot be sampled (-> 400)
  engine.generate(..., tenant=KEY)    the key a request is scheduled fairly under
  engine.encode_chat(messages, tools=[...])
  GenResult.logprobs     [{"token": str, "logprob": float, "top_logprobs": [{"token", "logprob"}]}] | None
  GenResult.tool_calls   [{"id", "type": "function", "function": {"name", "arguments": str}}] | None
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from tunelab.errors import TunelabError
from tunelab.serve.decode import SamplingParams
from tunelab.serve.engine import Engine, GenResult
from tunelab.serve.errors import ApiError

NEUTRAL: dict[str, Any] = {
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "logprobs": False,
    "top_logprobs": 0,
    "response_format": None,
    "tools": None,
    "tool_choice": None,
}


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_params(
    engine: Engine,
    temperature: float,
    top_p: float,
    max_tokens: int,
    stop: tuple[str, ...],
    seed: int | None,
    extras: dict[str, Any],
) -> SamplingParams:
    """SamplingParams for the engine, refusing what it cannot do and what it says cannot be sampled."""
    have = {f.name for f in dataclasses.fields(SamplingParams)}
    for name, value in extras.items():
        if name not in have and value not in (None, NEUTRAL[name]):
            raise ApiError(
                400, f"{name}: not supported by this server's engine yet", code="unsupported_parameter", param=name
            )
    params = SamplingParams(
        temperature, top_p, max_tokens, stop, seed, **{k: v for k, v in extras.items() if k in have}
    )
    validate = getattr(engine, "validate", None)
    if validate is not None:
        try:
            validate(params)
        except TunelabError as e:
            raise ApiError(400, str(e), code="invalid_sampling_parameter") from None
    return params


def with_seed(params: SamplingParams, choice: int) -> SamplingParams:
    """Choice j of a seeded request uses seed + j: the choices differ and each is reproducible."""
    if params.seed is None or choice == 0:
        return params
    seed = params.seed + choice if params.seed + choice < 2**64 else params.seed - choice
    return dataclasses.replace(params, seed=seed)


def encode_chat(engine: Engine, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
    if not tools:
        return engine.encode_chat(messages)
    if not _accepts(engine.encode_chat, "tools"):
        raise ApiError(
            400, "tools: not supported by this server's engine yet", code="unsupported_parameter", param="tools"
        )
    return engine.encode_chat(messages, tools=tools)  # type: ignore[call-arg]  # feature-detected above


def generate(
    engine: Engine,
    model: str,
    ids: list[int],
    params: SamplingParams,
    on_delta: Callable[[str], None] | None,
    is_cancelled: Callable[[], bool],
    tenant: str,
) -> Awaitable[GenResult]:
    extra = {"tenant": tenant} if _accepts(engine.generate, "tenant") else {}
    return engine.generate(model, ids, params, on_delta=on_delta, is_cancelled=is_cancelled, **extra)


def tool_calls(result: GenResult) -> list[dict[str, Any]] | None:
    return getattr(result, "tool_calls", None) or None


def chat_logprobs(result: GenResult) -> dict[str, Any] | None:
    entries = getattr(result, "logprobs", None)
    if not entries:
        return None
    content = [{**_entry(e), "top_logprobs": [_entry(t) for t in e.get("top_logprobs", [])]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(result: GenResult, offset: int) -> dict[str, Any] | None:
    """The legacy completions shape: parallel lists, text offsets counted from `offset`."""
    entries = getattr(result, "logprobs", None)
    if not entries:
        return None
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs", [])} for e in entries],
        "text_offset": offsets,
    }


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    return {"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode("utf-8"))}
