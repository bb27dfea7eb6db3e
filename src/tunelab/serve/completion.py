"""The completion flow behind /v1/chat/completions and /v1/completions.

Order of checks: model id (404) -> n and prompt counts (400) -> input guard over every message or prompt
(400 on block) -> encoding -> max_tokens and prompt length (400; without max_tokens the server's default,
cut to what the context leaves) -> the sampling values, mapped and validated by the engine (bridge.py,
400 naming the field) -> generation under the request timeout (504) -> output guard -> row -> answer.
Every step after the route starts ends in exactly one row (entry.py).

Each prompt is one engine request with its `n` choices (one prefill, n rows of the running batch); a list
prompt is one engine request per prompt, and choice `i * n + j` is prompt i's j-th sample. The engine
request is scheduled under the caller's key (the fairness tenant; an open server: the model id). A client
that disconnects stops its decoding: a non-streamed request watches the connection while it waits; a
streamed one is stopped by the server (streaming.py).

Logprobs are withheld (null) for a choice whose output the guard redacted or blocked: the token texts
would show what was taken out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tunelab.serve import bridge
from tunelab.serve import schemas as S
from tunelab.serve.engine import Choice, Chunk, GenResult, SamplingParams, TokenLogprob
from tunelab.serve.entry import CLIENT_CLOSED, ChoiceOut, Entry
from tunelab.serve.errors import ApiError
from tunelab.serve.guard import Decision, blocked
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
    echo: bool = False
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
    def n(self) -> int:
        return self.params.n

    @property
    def logprobs(self) -> bool:
        return self.params.logprobs

    @property
    def indices(self) -> list[int]:
        return list(range(len(self.prompts) * self.n))

    def start(self, prompt: int, on_chunk: Callable[[Chunk], None] | None = None) -> Awaitable[GenResult]:
        """The engine request of one prompt (its n choices)."""
        mine = range(prompt * self.n, (prompt + 1) * self.n)
        return self.state.engine.generate(
            self.model,
            self.prompts[prompt],
            self.params,
            is_cancelled=lambda: self.cancelled or all(i in self.stopped for i in mine),
            tenant=self.entry.ctx.key_id,
            on_chunk=on_chunk,
        )

    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def prefix(self, index: int) -> str:
        return self.prompt_texts[index // self.n] if self.echo else ""

    def logprobs_of(self, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
        return bridge.chat_logprobs(entries) if self.chat else bridge.completion_logprobs(entries, offset)


async def prepare(state: ServerState, entry: Entry, body: Body) -> Call:
    cfg, chat = state.cfg.limits, isinstance(body, S.ChatRequest)
    if body.model not in state.served():
        served = ", ".join(state.served())
        raise ApiError(404, f"model {body.model!r} not found; served: {served}", code="model_not_found", param="model")
    if body.n > cfg.max_n:
        raise ApiError(400, f"n {body.n} is over this server's limit of {cfg.max_n}", param="n")
    texts = [m.text() for m in body.messages] if isinstance(body, S.ChatRequest) else _prompts(body, cfg.max_prompts)
    texts, decisions = await _guard(state, texts)
    entry.count(decisions)
    entry.record = record_of(body, texts)
    if hit := blocked(decisions):
        raise ApiError(400, f"request refused by the guard ({hit.rule}: {hit.detail})", code="content_filter")
    if isinstance(body, S.ChatRequest):
        msgs = [m.for_template(t) for m, t in zip(body.messages, texts, strict=True)]
        prompts = [state.engine.encode_chat(msgs, tools=bridge.tools_of(body))]
    else:
        prompts = [state.engine.encode_text(t) for t in texts]
    max_tokens = _max_tokens(state, body, prompts)
    try:
        stops = body.stops()
    except ValueError as e:
        raise ApiError(400, str(e), param="stop") from None
    params = bridge.sampling(state.engine, body, max_tokens, stops)
    state.metrics.prompt_tokens.labels(body.model).inc(sum(len(p) for p in prompts))
    echo = bool(getattr(body, "echo", False))
    return Call(state, entry, chat, prompts, texts, params, echo)


def _prompts(body: S.CompletionRequest, most: int) -> list[str]:
    prompts = body.prompts()
    if not prompts or len(prompts) > most:
        raise ApiError(400, f"prompt: give 1 to {most} prompts (got {len(prompts)})", param="prompt")
    if body.best_of not in (None, body.n):
        raise ApiError(400, "best_of: only best_of equal to n is supported", param="best_of")
    if body.suffix:
        raise ApiError(400, "suffix: not supported", code="unsupported_parameter", param="suffix")
    return prompts


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
    done = [finish_choice(call, i * call.n + c.index, c, r) for i, r in enumerate(results) for c in r.choices]
    outs = [o for o, _ in done]
    entry.write(200, outs, call.prompt_tokens())
    await entry.stored()  # never raises: a failed write is counted, the answer still goes out
    usage = S.usage(call.prompt_tokens(), sum(o.completion_tokens for o in outs))
    if call.chat:
        choices = [
            S.chat_choice(o.index, (o.text or None) if o.tool_calls else o.text, o.finish_reason, o.tool_calls, lp)
            for o, lp in done
        ]
        return JSONResponse(S.chat_response(entry.ctx.request_id, call.model, choices, usage))
    choices = [S.completion_choice(o.index, o.text, o.finish_reason, lp) for o, lp in done]
    return JSONResponse(S.completion_response(entry.ctx.request_id, call.model, choices, usage))


async def _run(call: Call, request: Request) -> list[GenResult] | None:
    """Every prompt's result; None when the client disconnected first (the row is written here)."""
    state = call.state
    state.begin(call)
    gathered = asyncio.gather(*(call.start(i) for i in range(len(call.prompts))), return_exceptions=True)
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
            call.entry.write(CLIENT_CLOSED, cancelled_choices(call, ended), call.prompt_tokens(), finish="cancelled")
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


def cancelled_choices(call: Call, ended: list[GenResult | BaseException], text: str = "") -> list[ChoiceOut]:
    """The choices of requests that ended early, with their token counts where the engine answered."""
    out = []
    for i, r in enumerate(ended):
        for j in range(call.n):
            c = r.choices[j] if isinstance(r, GenResult) and j < len(r.choices) else None
            out.append(ChoiceOut(i * call.n + j, text, "cancelled", len(c.token_ids) if c else 0))
    return out


def finish_choice(call: Call, index: int, choice: Choice, result: GenResult) -> tuple[ChoiceOut, Any]:
    """Output guard over one choice's whole text (a block withholds it: finish_reason content_filter), and its
    logprobs in OpenAI's shape when asked for and nothing was redacted."""
    text, decisions = call.state.guard.check_output(choice.text)
    call.entry.count(decisions)
    tokens, calls = len(choice.token_ids), list(choice.tool_calls) or None
    if blocked(decisions):
        return ChoiceOut(index, "", "content_filter", tokens), None
    prefix = call.prefix(index)
    out = ChoiceOut(index, prefix + text, choice.finish_reason, tokens, calls)
    if not call.logprobs or changed(decisions):
        return out, None
    entries = list(choice.logprobs or ())
    if call.echo and result.prompt_logprobs:
        entries = list(result.prompt_logprobs) + entries
    return out, call.logprobs_of(entries, 0)


def changed(decisions: list[Decision]) -> bool:
    """Whether the guard took anything out of the text (then its token logprobs would reveal it)."""
    return any(d.action in ("redact", "block") for d in decisions)
