"""The completion flow behind /v1/chat/completions and /v1/completions.

Order of checks: model id (404) -> n and prompt counts (400) -> fields the engine cannot honour (400) ->
input guard over every message or prompt (400 on block) -> encoding -> max_tokens and prompt length
(400; without max_tokens the server's default, cut to what the context leaves) -> the engine's own
validation of the sampling values (400) -> generation under the request timeout (504) -> output guard ->
row -> answer. Every step after the route starts ends in exactly one row (entry.py).

`n` choices and list prompts fan out into one engine request per choice (they batch together); choice
`i * n + j` is prompt i's j-th sample. A client that disconnects stops its decoding: a non-streamed
request watches the connection while it waits; a streamed one is stopped by the server (streaming.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tunelab.serve import bridge
from tunelab.serve import schemas as S
from tunelab.serve.decode import SamplingParams
from tunelab.serve.engine import GenResult
from tunelab.serve.entry import CLIENT_CLOSED, ChoiceOut, Entry
from tunelab.serve.errors import ApiError
from tunelab.serve.guard import blocked
from tunelab.serve.state import ServerState

Body = S.ChatRequest | S.CompletionRequest


@dataclass
class Call:
    """One validated completion request on its way through the engine."""

    state: ServerState
    entry: Entry
    chat: bool
    prompts: list[list[int]]
    prompt_texts: list[str]
    params: SamplingParams
    n: int
    echo: bool = False
    logprobs: bool = False
    cancelled: bool = False  # read by the decoding thread
    stopped: set[int] = field(default_factory=set)  # choices whose output was blocked: stop decoding them
    aborted: str | None = None  # why the server ended it (its adapter was unloaded)

    __hash__ = object.__hash__  # tracked in a set while generating (state.active)

    def abort(self, reason: str) -> None:
        self.aborted, self.cancelled = reason, True

    def check_aborted(self) -> None:
        if self.aborted is not None:
            raise ApiError(410, self.aborted, code="model_unloaded")

    @property
    def model(self) -> str:
        return self.entry.model

    @property
    def indices(self) -> list[int]:
        return list(range(len(self.prompts) * self.n))

    def start(self, index: int, on_delta: Any = None) -> Awaitable[GenResult]:
        prompt, j = divmod(index, self.n)
        return bridge.generate(
            self.state.engine,
            self.model,
            self.prompts[prompt],
            bridge.with_seed(self.params, j),
            on_delta,
            lambda: self.cancelled or index in self.stopped,
            self.entry.ctx.tenant,
        )

    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def prefix(self, index: int) -> str:
        return self.prompt_texts[index // self.n] if self.echo else ""


async def prepare(state: ServerState, entry: Entry, body: Body) -> Call:
    cfg, chat = state.cfg.limits, isinstance(body, S.ChatRequest)
    if body.model not in state.served():
        served = ", ".join(state.served())
        raise ApiError(404, f"model {body.model!r} not found; served: {served}", code="model_not_found", param="model")
    if body.n > cfg.max_n:
        raise ApiError(400, f"n {body.n} is over this server's limit of {cfg.max_n}", param="n")
    texts = [m.text() for m in body.messages] if isinstance(body, S.ChatRequest) else _prompts(body, cfg.max_prompts)
    extras = _extras(body)
    texts, decisions = await _guard(state, texts)
    entry.count(decisions)
    entry.record = record_of(body, texts)
    if hit := blocked(decisions):
        raise ApiError(400, f"request refused by the guard ({hit.rule}: {hit.detail})", code="content_filter")
    if isinstance(body, S.ChatRequest):
        msgs = [m.for_template(t) for m, t in zip(body.messages, texts, strict=True)]
        prompts = [bridge.encode_chat(state.engine, msgs, extras.get("tools"))]
    else:
        prompts = [state.engine.encode_text(t) for t in texts]
    max_tokens = _max_tokens(state, body, prompts)
    try:
        stops = body.stops()
    except ValueError as e:
        raise ApiError(400, str(e), param="stop") from None
    params = bridge.build_params(state.engine, body.temperature, body.top_p, max_tokens, stops, body.seed, extras)
    state.metrics.prompt_tokens.labels(body.model).inc(sum(len(p) for p in prompts))
    echo = bool(getattr(body, "echo", False))
    return Call(state, entry, chat, prompts, texts, params, body.n, echo, bool(extras.get("logprobs")))


def _prompts(body: S.CompletionRequest, most: int) -> list[str]:
    prompts = body.prompts()
    if not prompts or len(prompts) > most:
        raise ApiError(400, f"prompt: give 1 to {most} prompts (got {len(prompts)})", param="prompt")
    if body.best_of not in (None, body.n):
        raise ApiError(400, "best_of: only best_of equal to n is supported", param="best_of")
    if body.suffix:
        raise ApiError(400, "suffix: not supported", code="unsupported_parameter", param="suffix")
    return prompts


def _extras(body: Body) -> dict[str, Any]:
    """The request's optional features, as the engine's SamplingParams would name them."""
    if body.logit_bias:
        raise ApiError(400, "logit_bias: not supported", code="unsupported_parameter", param="logit_bias")
    out: dict[str, Any] = {"presence_penalty": body.presence_penalty, "frequency_penalty": body.frequency_penalty}
    if isinstance(body, S.CompletionRequest):
        return out | {"logprobs": body.logprobs is not None, "top_logprobs": body.logprobs or 0}
    out |= {"logprobs": bool(body.logprobs), "top_logprobs": body.top_logprobs or 0}
    if body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if body.response_format is not None and body.response_format.type != "text":
        out["response_format"] = body.response_format.model_dump(by_alias=True, exclude_none=True)
    if body.tool_choice is not None and not body.tools:
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    if body.tools and body.tool_choice != "none":  # "none": the model answers in text, tools unused
        out["tools"] = [t.model_dump(exclude_none=True) for t in body.tools]
        choice = body.tool_choice
        out["tool_choice"] = choice.model_dump() if isinstance(choice, S.NamedToolChoice) else (choice or "auto")
    return out


async def _guard(state: ServerState, texts: list[str]) -> tuple[list[str], list[Any]]:
    # A classifier model, or long text (tenths of a second of regexes on a full body): off the event loop.
    if state.guard.slow or sum(len(t) for t in texts) > 4096:
        return await asyncio.to_thread(state.guard.check_input, texts)
    return state.guard.check_input(texts)


def _max_tokens(state: ServerState, body: Body, prompts: list[list[int]]) -> int:
    lim, context = state.cfg.limits, state.engine.max_context()
    asked = body.max_completion_tokens or body.max_tokens if isinstance(body, S.ChatRequest) else body.max_tokens
    longest = max(len(p) for p in prompts)
    if asked is not None:
        if asked > lim.max_tokens:
            raise ApiError(
                400, f"max_tokens {asked} is over this server's limit of {lim.max_tokens}", param="max_tokens"
            )
        allowed = min(lim.max_prompt_tokens, context - asked)
        if longest > allowed:
            raise ApiError(400, f"prompt is {longest} tokens; at most {allowed} allowed with max_tokens {asked}")
        return asked
    if longest > lim.max_prompt_tokens:
        raise ApiError(400, f"prompt is {longest} tokens; at most {lim.max_prompt_tokens} allowed")
    room = min(lim.default_max_tokens, lim.max_tokens, context - longest)
    if room < 1:
        raise ApiError(400, f"prompt is {longest} tokens: no room left to generate in the {context}-token context")
    return room


def record_of(body: Body, texts: list[str] | None) -> dict[str, Any]:
    """The request as the row keeps it: the body, with messages/prompts as the model saw them."""
    out = body.model_dump(exclude_none=True, by_alias=True, exclude={"messages", "prompt"})
    if isinstance(body, S.ChatRequest):
        msgs = [m.model_dump(exclude_none=True) for m in body.messages]
        for m, t in zip(msgs, texts or [], strict=False):
            m["content"] = t
        return out | {"messages": msgs}
    return out | {"prompt": texts if texts is not None else body.prompt}


# --------------------------------------------------------------------------- a non-streamed answer


async def respond(call: Call, request: Request) -> Response:
    entry = call.entry
    results = await _run(call, request)
    if results is None:  # the client went away; nobody reads this answer
        return Response(status_code=CLIENT_CLOSED)
    outs = [finish_choice(call, i, r) for i, r in zip(call.indices, results, strict=True)]
    entry.write(200, outs, call.prompt_tokens())
    await entry.stored()  # never raises: a failed write is counted, the answer still goes out
    usage = S.usage(call.prompt_tokens(), sum(o.completion_tokens for o in outs))
    if call.chat:
        choices = [
            S.chat_choice(o.index, (o.text or None) if o.tool_calls else o.text, o.finish_reason, o.tool_calls, lp)
            for o, lp in _lps(call, results, outs)
        ]
        return JSONResponse(S.chat_response(entry.ctx.request_id, call.model, choices, usage))
    choices = [S.completion_choice(o.index, o.text, o.finish_reason, lp) for o, lp in _lps(call, results, outs)]
    return JSONResponse(S.completion_response(entry.ctx.request_id, call.model, choices, usage))


def _lps(call: Call, results: list[GenResult], outs: list[ChoiceOut]) -> list[tuple[ChoiceOut, Any]]:
    if not call.logprobs:
        return [(o, None) for o in outs]
    if call.chat:
        return [(o, bridge.chat_logprobs(r)) for o, r in zip(outs, results, strict=True)]
    return [(o, bridge.completion_logprobs(r, len(call.prefix(o.index)))) for o, r in zip(outs, results, strict=True)]


async def _run(call: Call, request: Request) -> list[GenResult] | None:
    """Every choice's result; None when the client disconnected first (the row is written here)."""
    state = call.state
    state.begin(call)
    gathered = asyncio.gather(*(call.start(i) for i in call.indices), return_exceptions=True)
    gathered.add_done_callback(lambda _: state.end(call))
    watch = asyncio.ensure_future(_disconnected(request))
    both: set[asyncio.Future[Any]] = {gathered, watch}
    try:
        timeout = state.cfg.limits.request_timeout_s
        done, _ = await asyncio.wait(both, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if gathered not in done:
        call.cancelled = True
        if watch in done:
            ended = await gathered
            outs = [_cancelled_choice(i, r) for i, r in zip(call.indices, ended, strict=True)]
            call.entry.write(CLIENT_CLOSED, outs, call.prompt_tokens(), finish="cancelled")
            return None
        raise ApiError(504, f"generation took over {timeout}s", "timeout")
    call.check_aborted()
    results: list[GenResult] = []
    for r in gathered.result():
        if isinstance(r, BaseException):
            raise r
        results.append(r)
    return results


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is already read, so only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _cancelled_choice(index: int, r: GenResult | BaseException) -> ChoiceOut:
    if isinstance(r, BaseException):
        return ChoiceOut(index, "", "cancelled")
    return ChoiceOut(index, "", "cancelled", r.completion_tokens)


def finish_choice(call: Call, index: int, result: GenResult) -> ChoiceOut:
    """Output guard over one choice's whole text; a block withholds it (finish_reason content_filter)."""
    text, decisions = call.state.guard.check_output(result.text)
    call.entry.count(decisions)
    calls = bridge.tool_calls(result)
    if blocked(decisions):
        return ChoiceOut(index, "", "content_filter", result.completion_tokens)
    finish = "tool_calls" if calls else result.finish_reason
    return ChoiceOut(index, call.prefix(index) + text, finish, result.completion_tokens, calls)
