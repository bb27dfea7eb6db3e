"""Streamed answers: OpenAI's SSE shape (`data: {chunk}` lines, then `data: [DONE]`), one chunk stream per
choice, and exactly one row however the stream ends.

Each choice's text passes through its own `OutputFilter` (guard.py), which holds text back while a
redaction could still touch it. The row of a completed stream is queued and stored before `[DONE]`, so
feedback can name the request as soon as the client has read the end. An engine error or the timeout
ends the stream with an error event in OpenAI's error shape (the `openai` client raises it) and no
`[DONE]`. When the client disconnects the server cancels this generator: its `finally` marks the request
cancelled (so the engine stops decoding it at the next token) and leaves the row to a done-callback of
the engine tasks, which runs outside the cancelled task: nothing there awaits, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from tunelab.errors import TunelabError
from tunelab.serve import bridge
from tunelab.serve import schemas as S
from tunelab.serve.completion import Call
from tunelab.serve.engine import GenResult
from tunelab.serve.entry import CLIENT_CLOSED, ChoiceOut
from tunelab.serve.errors import ApiError
from tunelab.serve.guard import OutputFilter


class _Timeout(Exception):
    pass


class _Inbox:
    """Deltas from the decoding thread (delivered on the event loop), tagged with their choice."""

    def __init__(self) -> None:
        self.items: deque[tuple[int, str]] = deque()
        self.ready = asyncio.Event()

    def put(self, index: int, text: str) -> None:
        self.items.append((index, text))
        self.ready.set()


class _Stream:
    def __init__(self, call: Call) -> None:
        self.call, self.inbox = call, _Inbox()
        self.tasks = {i: asyncio.ensure_future(call.start(i, self._to(i))) for i in call.indices}
        self.filters = {i: OutputFilter(call.state.guard) for i in call.indices}
        self.sent: dict[int, list[str]] = {i: [call.prefix(i)] for i in call.indices}
        self.outs: dict[int, ChoiceOut] = {}
        self.all = asyncio.gather(*self.tasks.values(), return_exceptions=True)

    def _to(self, index: int) -> Any:
        return lambda text: self.inbox.put(index, text)

    def chunk(self, index: int, text: str | None, finish: str | None = None, **kw: Any) -> str:
        e = self.call.entry
        return _sse(S.chunk(e.ctx.request_id, self.call.model, self.call.chat, text, finish, index=index, **kw))

    def feed(self, index: int, delta: str) -> Iterator[str]:
        f = self.filters[index]
        if f.blocked:
            return
        text = f.feed(delta)
        if f.blocked:
            self.call.stopped.add(index)  # nothing more of this choice will be sent: stop decoding it
        if text:
            self.sent[index].append(text)
            yield self.chunk(index, text)

    def close(self, index: int) -> Iterator[str]:
        """The last text and the finish chunk of a choice whose engine task is done."""
        result: GenResult = self.tasks[index].result()  # an engine error propagates to `events`
        self.call.check_aborted()
        f = self.filters[index]
        if text := f.finish():
            self.sent[index].append(text)
            yield self.chunk(index, text)
        calls = bridge.tool_calls(result)
        finish = "content_filter" if f.blocked else ("tool_calls" if calls else result.finish_reason)
        self.call.entry.count(f.decisions)
        self.outs[index] = ChoiceOut(index, "".join(self.sent[index]), finish, result.completion_tokens, calls)
        extra: dict[str, Any] = {}
        if calls:
            extra["tool_calls"] = [{"index": k, **c} for k, c in enumerate(calls)]
        if self.call.logprobs:
            lp = bridge.chat_logprobs(result) if self.call.chat else bridge.completion_logprobs(result, 0)
            extra["logprobs"] = lp
        yield self.chunk(index, None, finish, extra=extra or None)

    async def wait(self, pending: set[int], deadline: float) -> None:
        self.inbox.ready.clear()
        waiter = asyncio.ensure_future(self.inbox.ready.wait())
        try:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            tasks = {waiter, *(self.tasks[i] for i in pending)}
            done, _ = await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not done:
            raise _Timeout

    def choices(self, finish: str) -> list[ChoiceOut]:
        """Every choice as far as it got: finished ones as they ended, the rest with `finish`."""
        out = []
        for i, task in self.tasks.items():
            if i in self.outs:
                out.append(self.outs[i])
                continue
            ok = task.done() and not task.cancelled() and task.exception() is None
            tokens = task.result().completion_tokens if ok else 0
            out.append(ChoiceOut(i, "".join(self.sent[i]), finish, tokens))
        return out


async def events(call: Call, include_usage: bool) -> AsyncIterator[str]:
    state, entry = call.state, call.entry
    rid, timeout = entry.ctx.request_id, state.cfg.limits.request_timeout_s
    state.begin(call)
    s = _Stream(call)
    s.all.add_done_callback(lambda _: state.end(call))
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        for i in call.indices:
            yield _sse(S.chunk(rid, call.model, call.chat, call.prefix(i) or None, None, first=True, index=i))
        pending = set(call.indices)
        while pending:
            if s.inbox.items:
                i, delta = s.inbox.items.popleft()
                for line in s.feed(i, delta):
                    yield line
                continue
            if done := sorted(i for i in pending if s.tasks[i].done()):
                for i in done:
                    pending.discard(i)
                    for line in s.close(i):
                        yield line
                continue
            await s.wait(pending, deadline)
        outs = [s.outs[i] for i in call.indices]
        if include_usage:
            u = S.usage(call.prompt_tokens(), sum(o.completion_tokens for o in outs))
            yield _sse(S.usage_chunk(rid, call.model, call.chat, u))
        entry.write(200, outs, call.prompt_tokens())
        await entry.stored()  # never raises: a failed write is counted, the answer still goes out
        yield "data: [DONE]\n\n"
    except _Timeout:
        call.cancelled = True
        entry.write(504, s.choices("timeout"), call.prompt_tokens(), finish="timeout")
        yield _sse(S.error_body(f"generation took over {timeout}s", "timeout"))
    except ApiError as e:  # the adapter was unloaded under this request
        call.cancelled = True
        entry.write(e.status, s.choices("cancelled"), call.prompt_tokens(), finish="cancelled")
        yield _sse(e.body())
    except TunelabError as e:  # e.g. the adapter was unloaded while this request was queued
        call.cancelled = True
        entry.write(400, s.choices("error"), call.prompt_tokens(), finish="error")
        yield _sse(S.error_body(str(e)))
    except Exception as e:
        call.cancelled = True
        entry.write(500, s.choices("error"), call.prompt_tokens(), finish="error")
        yield _sse(S.error_body(f"generation failed ({type(e).__name__}; request {rid})", "server_error"))
    finally:
        if not entry.written:  # the client went away and the server cancelled this stream
            call.cancelled = True
            s.all.add_done_callback(
                lambda _: entry.write(CLIENT_CLOSED, s.choices("cancelled"), call.prompt_tokens(), finish="cancelled")
            )


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
