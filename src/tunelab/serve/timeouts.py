"""Read timeouts for uvicorn's HTTP/1.1 protocol: a slow client cannot hold a connection open forever.

uvicorn (h11) times out only an idle kept-alive connection after a response. A client that opens a
connection and trickles its headers, or sends the headers and then the body a byte at a time (slowloris),
is waited on indefinitely, each one holding a socket, buffers and, once its headers are in, a request task.
`protocol(limits)` is uvicorn's h11 protocol with two deadlines while a request is being *received* (its
headers, then its body), none while the app works or the response streams out:

- `limits.idle_timeout_s`: the longest silence while receiving a request, and between requests on a
  kept-alive connection (also uvicorn's `timeout_keep_alive`);
- `limits.read_timeout_s`: the longest a whole request (headers and body) may take to arrive, from its first
  byte, however steadily it trickles.

A client that misses one gets `408` in OpenAI's error shape (when no response has started) and the
connection is closed; an idle connection with no request begun is closed quietly. The request never
reached a route, so no row is written. This subclasses uvicorn's `H11Protocol` and reads its request cycle
(`cycle.more_body`, `response_started`, `response_complete`); tests/unit/serve/test_timeouts.py exercises
every path against a real server, so an uvicorn change that breaks it fails there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tunelab.serve.config import LimitsConfig
from tunelab.serve.schemas import error_body

log = logging.getLogger("tunelab.serve")


def protocol(limits: LimitsConfig) -> type[H11Protocol]:
    """uvicorn's `http=` protocol class with these limits' read and idle timeouts."""
    return type(
        "TimedH11Protocol", (TimedH11Protocol,), {"read_s": limits.read_timeout_s, "idle_s": limits.idle_timeout_s}
    )


def uvicorn_options(limits: LimitsConfig) -> dict[str, Any]:
    return {"http": protocol(limits), "timeout_keep_alive": max(1, round(limits.idle_timeout_s))}


class TimedH11Protocol(H11Protocol):
    read_s = 30.0
    idle_s = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since: float | None = None  # when the request being received sent its first byte
        self._last = self.loop.time()  # the last bytes received (or the start of a wait for the next request)
        self._timer: asyncio.TimerHandle | None = self.loop.call_later(self.idle_s, self._check)

    def data_received(self, data: bytes) -> None:
        self._last = self.loop.time()
        if self._since is None and self._receiving():
            self._since = self._last
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._since, self._last = None, self.loop.time()  # the wait for the next request starts now

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _receiving(self) -> bool:
        """Waiting for a request's headers (none yet, or the last one answered) or for the rest of its body."""
        c = self.cycle
        return c is None or c.response_complete or (c.more_body and not c.response_started)

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if not self._receiving():  # the app is working or answering: no read deadline
            self._since = None
            self._timer = self.loop.call_later(self.idle_s, self._check)
            return
        end = self._last + self.idle_s
        if self._since is not None:
            end = min(end, self._since + self.read_s)
        if now >= end:
            self._expire()
        else:
            self._timer = self.loop.call_later(end - now, self._check)

    def _expire(self) -> None:
        c = self.cycle
        waiting_headers = (c is None or c.response_complete) and self.conn.their_state is h11.IDLE
        waiting_body = c is not None and not c.response_started and self.conn.their_state is h11.SEND_BODY
        if (waiting_headers and self._since is not None) or waiting_body:
            what = "body" if waiting_body else "headers"
            log.warning("closing a connection from %s: request %s not received in time", self.client, what)
            self.transport.write(_timeout_response(what, self.read_s, self.idle_s))
        self.transport.close()


def _timeout_response(what: str, read_s: float, idle_s: float) -> bytes:
    message = (
        f"request {what} not received in time (limits: {read_s:g}s for a whole request, "
        f"{idle_s:g}s of silence); the connection is closed"
    )
    body = json.dumps(error_body(message, code="request_timeout")).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
