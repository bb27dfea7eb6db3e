"""OpenAI request fields -> the engine's `SamplingParams`, and the engine's logprobs -> OpenAI's shapes.

Every OpenAI sampling field the engine decodes maps onto one `SamplingParams` field (engine.py, decode.py):
`n` (one prefill, n rows), penalties, `logit_bias` (token-id strings -> ints), `logprobs`/`top_logprobs`
(completions: `logprobs: k`; with `echo` the prompt's logprobs too), `response_format` and a forcing
`tool_choice` (a constraint for llguidance), `tools` (the function names whose calls are parsed). A value
the engine cannot decode is a 400 naming the field: the schema's ranges first (schemas.py), then
`engine.validate` (say `temperature: 1e-45`, a schema llguidance cannot compile), before the request is
queued, so a bad request never reaches a batch it would share.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError
from tunelab.serve import schemas as S
from tunelab.serve.engine import (
    Constraint,
    Engine,
    SamplingParams,
    TokenLogprob,
    response_format_constraint,
    tool_choice_constraint,
    tool_names,
)
from tunelab.serve.errors import ApiError

Body = S.ChatRequest | S.CompletionRequest


def tools_of(body: Body) -> list[dict[str, Any]] | None:
    """The tools the chat template renders: none for completions or `tool_choice: "none"` (text answer)."""
    if not isinstance(body, S.ChatRequest) or not body.tools or body.tool_choice == "none":
        return None
    return [t.model_dump(exclude_none=True) for t in body.tools]


def sampling(engine: Engine, body: Body, max_tokens: int, stop: tuple[str, ...]) -> SamplingParams:
    """The request's SamplingParams, validated by the engine (400 naming the field when they cannot be decoded)."""
    if isinstance(body, S.ChatRequest):
        if body.top_logprobs and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        logprobs, top = bool(body.logprobs), body.top_logprobs or 0
    else:
        logprobs, top = body.logprobs is not None, body.logprobs or 0
    tools = tools_of(body)
    params = SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=max_tokens,
        stop=stop,
        seed=body.seed,
        n=body.n,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=_bias(body.logit_bias),
        logprobs=logprobs,
        top_logprobs=top,
        prompt_logprobs=logprobs and bool(getattr(body, "echo", False)),
        constraint=_constraint(body, tools),
        tools=tool_names(tools),
    )
    if err := engine.validate(params):
        field = err.split(":", 1)[0] if ":" in err else None
        raise ApiError(400, err, code="invalid_sampling_parameter", param=field)
    return params


def _bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in (bias or {}).items():
        if not key.strip().lstrip("-").isdigit():
            raise ApiError(400, f"logit_bias: key {key!r} is not a token id (an integer)", param="logit_bias")
        out.append((int(key), value))
    return tuple(out)


def _constraint(body: Body, tools: list[dict[str, Any]] | None) -> Constraint | None:
    if not isinstance(body, S.ChatRequest):
        return None
    if body.tool_choice is not None and not body.tools:
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, S.NamedToolChoice) else body.tool_choice
    fmt = body.response_format.model_dump(by_alias=True, exclude_none=True) if body.response_format else None
    try:
        forced = tool_choice_constraint(tools, choice, body.parallel_tool_calls is not False) if tools else None
        shaped = response_format_constraint(fmt)
    except TunelabError as e:
        raise ApiError(400, str(e), param=str(e).split(":", 1)[0].split(".", 1)[0]) from None
    if forced is not None and shaped is not None:
        raise ApiError(
            400, "response_format and a forced tool_choice cannot both shape the output", param="response_format"
        )
    return forced or shaped


# --------------------------------------------------------------------------- logprobs in OpenAI's shapes


def chat_logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    """`choice.logprobs` of chat: {content: [{token, logprob, bytes, top_logprobs: [...]}], refusal}."""
    content = [{**_entry(e), "top_logprobs": [_entry(t) for t in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists; text offsets count from `offset` (text already sent)."""
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top} if e.logprob is not None else None for e in entries],
        "text_offset": offsets,
    }


def _entry(e: TokenLogprob) -> dict[str, Any]:
    return {"token": e.token, "logprob": e.logprob, "bytes": list(e.bytes)}
