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
from tunelab.serve import schemas as S
from tunelab.serve.completion import Call, changed
from tunelab.serve.engine import Chunk, TokenLogprob
from tunelab.serve.entry import CLIENT_CLOSED, ChoiceOut
from tunelab.serve.errors import ApiError
from tunelab.serve.guard import OutputFilter


class _Timeout(Exception):
    pass


class _Inbox:
    """Chunks from the decoding thread (delivered on the event loop), tagged with their choice."""

    def __init__(self) -> None:
        self.items: deque[tuple[int, Chunk]] = deque()
        self.ready = asyncio.Event()

    def put(self, index: int, chunk: Chunk) -> None:
        self.items.append((index, chunk))
        self.ready.set()


class _Choice:
    """One choice's stream: its output filter, the text sent, and logprobs waiting for their text to be sent."""

    def __init__(self, call: Call, index: int) -> None:
        self.filter = OutputFilter(call.state.guard)
        self.sent = [call.prefix(index)]
        self.started = False  # its first chunk (role, or echo's prompt) was sent
        self.waiting: deque[tuple[int, tuple[TokenLogprob, ...]]] = deque()  # (raw text end, entries)
        self.offset = len(self.sent[0])  # completions' text_offset of the next token
        self.hide = False  # the guard took text out: no more logprobs (their tokens would show it)
        self.out: ChoiceOut | None = None

    def release(self, upto: int) -> list[TokenLogprob]:
        """Logprobs whose text has been released (all of them with upto < 0)."""
        self.hide = self.hide or changed(self.filter.decisions)
        out: list[TokenLogprob] = []
        while self.waiting and (upto < 0 or self.waiting[0][0] <= upto):
            out += self.waiting.popleft()[1]
        return [] if self.hide else out


class _Stream:
    def __init__(self, call: Call) -> None:
        self.call, self.inbox = call, _Inbox()
        self.state = {i: _Choice(call, i) for i in call.indices}
        self.tasks = [asyncio.ensure_future(call.start(p, self._to(p))) for p in range(len(call.prompts))]
        self.all = asyncio.gather(*self.tasks, return_exceptions=True)

    def _to(self, prompt: int) -> Any:
        return lambda chunk: self.inbox.put(prompt * self.call.n + chunk.index, chunk)

    def chunk(self, index: int, text: str | None, finish: str | None = None, **kw: Any) -> str:
        e = self.call.entry
        return _sse(S.chunk(e.ctx.request_id, self.call.model, self.call.chat, text, finish, index=index, **kw))

    def first(self, index: int, prompt_lp: tuple[TokenLogprob, ...] = ()) -> str:
        st = self.state[index]
        st.started = True
        extra = None
        if prompt_lp:  # echo: the prompt's logprobs ride with the prompt's text
            extra = {"logprobs": self.call.logprobs_of(list(prompt_lp), 0)}
        rid, call = self.call.entry.ctx.request_id, self.call
        return _sse(S.chunk(rid, call.model, call.chat, call.prefix(index) or None, None, True, index, extra))

    def on_chunk(self, index: int, ch: Chunk) -> Iterator[str]:
        st = self.state[index]
        if not st.started:
            yield self.first(index, ch.prompt_logprobs)
        if ch.logprobs and not st.hide:
            st.waiting.append((len(st.filter.raw) + len(ch.text), ch.logprobs))
        text = self.feed(index, ch.text) if ch.text else ""
        if ch.finish_reason is not None:
            yield from self.close(index, text, ch.finish_reason, ch.tool_calls)
            return
        lps = st.release(st.filter.released)
        if text or lps:
            yield self.send(index, text, lps)

    def feed(self, index: int, delta: str) -> str:
        f = self.state[index].filter
        if f.blocked:
            return ""
        text = f.feed(delta)
        if f.blocked:
            self.call.stopped.add(index)  # nothing more of this choice will be sent: stop decoding it
        return text

    def send(self, index: int, text: str, lps: list[TokenLogprob]) -> str:
        st = self.state[index]
        extra: dict[str, Any] = {}
        if lps:
            extra["logprobs"] = self.call.logprobs_of(lps, st.offset)
            st.offset += sum(len(e.token) for e in lps)
        if text:
            st.sent.append(text)
        return self.chunk(index, text or None, extra=extra or None)

    def close(self, index: int, text: str, finish: str, calls: tuple[dict[str, Any], ...]) -> Iterator[str]:
        """The last text and the finish chunk of a choice."""
        self.call.check_aborted()
        st = self.state[index]
        f = st.filter
        text += f.finish()
        lps = st.release(-1)
        if text or lps:
            yield self.send(index, text, lps)
        finish = "content_filter" if f.blocked else ("tool_calls" if calls else finish)
        self.call.entry.count(f.decisions)
        st.out = ChoiceOut(index, "".join(st.sent), finish, 0, list(calls) or None)
        extra: dict[str, Any] = {}
        if calls and not f.blocked:
            extra["tool_calls"] = [{"index": k, **c} for k, c in enumerate(calls)]
        yield self.chunk(index, None, finish, extra=extra or None)

    def failure(self) -> BaseException | None:
        """The engine error of a finished prompt, raised by the caller."""
        for t in self.tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                return t.exception()
        return None

    async def wait(self, deadline: float) -> None:
        self.inbox.ready.clear()
        waiter = asyncio.ensure_future(self.inbox.ready.wait())
        try:
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            tasks = {waiter, *(t for t in self.tasks if not t.done())}
            done, _ = await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not done:
            raise _Timeout

    def open(self) -> list[int]:
        return [i for i, st in self.state.items() if st.out is None]

    def choices(self, finish: str) -> list[ChoiceOut]:
        """Every choice as far as it got: finished ones as they ended, the rest with `finish`."""
        n, out = self.call.n, []
        for i, st in self.state.items():
            t = self.tasks[i // n]
            r = t.result() if t.done() and not t.cancelled() and t.exception() is None else None
            tokens = len(r.choices[i % n].token_ids) if r is not None and i % n < len(r.choices) else 0
            if st.out is None:
                out.append(ChoiceOut(i, "".join(st.sent), finish, tokens))
            else:
                st.out.completion_tokens = tokens
                out.append(st.out)
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
            if not (call.echo and call.logprobs):  # with both, the prompt's chunk waits for the prompt's logprobs
                yield s.first(i)
        while s.open():
            if s.inbox.items:
                i, ch = s.inbox.items.popleft()
                for line in s.on_chunk(i, ch):
                    yield line
                continue
            if err := s.failure():
                raise err
            if all(t.done() for t in s.tasks):  # answered without a last chunk (an engine that sends none)
                for i in s.open():
                    result = s.tasks[i // call.n].result()
                    c = result.choices[i % call.n]
                    rest = c.text[len(s.state[i].filter.raw) :] if c.text.startswith(s.state[i].filter.raw) else ""
                    for line in s.close(i, s.feed(i, rest) if rest else "", c.finish_reason, c.tool_calls):
                        yield line
                break
            await s.wait(deadline)
        await asyncio.wait(s.tasks)  # their last chunks came first; the results follow at once
        if err := s.failure():
            raise err
        outs = s.choices("stop")
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
