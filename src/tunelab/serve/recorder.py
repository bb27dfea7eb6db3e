"""One row per completion request, written on a thread of its own so that nothing can cancel it.

A streamed request whose client disconnects has its task cancelled by the server, and an `await` in its
cleanup is cancelled with it (that is how rows used to go missing). So a request's row is *queued*
synchronously (`submit` never awaits) and a single writer thread stores it with the store's retries; a
handler that wants to answer only once its row is stored (so feedback can name it right away) awaits the
returned future under `asyncio.shield`. PII redaction of every stored field also runs on that thread, off
the event loop. A write that fails for good is counted (`tunelab_store_failures_total`) and logged by
request id and error, never with the row's text; the client's answer is not affected.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tunelab.serve.guard import Decision, Guard
from tunelab.serve.metrics import Metrics
from tunelab.serve.store import Store, StoreError

log = logging.getLogger("tunelab.serve.store")


@dataclass
class RequestRow:
    request_id: str
    api_key_id: str | None
    endpoint: str
    model: str
    adapter: str | None
    request: dict[str, Any]
    response_text: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    status: int
    decisions: list[Decision] = field(default_factory=list)
    choices: list[dict[str, Any]] | None = None


class Recorder:
    def __init__(self, store: Store, metrics: Metrics, guard: Guard | None) -> None:
        self.store, self.metrics, self.guard = store, metrics, guard  # guard None: store text as it is
        store.on_retry = lambda table: metrics.store_retries.labels(table).inc()
        self.queue: queue.Queue[tuple[RequestRow, Future[bool]] | None] = queue.Queue()
        self._pending: dict[str, Future[bool]] = {}
        self._markers: list[threading.Event] = []
        self._stop = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="tunelab-store", daemon=True)
        self.thread.start()

    def submit(self, row: RequestRow) -> Future[bool]:
        """Queue a row (never blocks, never raises); the future says whether it was stored."""
        fut: Future[bool] = Future()
        with self._lock:
            self._pending[row.request_id] = fut
        self.queue.put((row, fut))
        return fut

    async def stored(self, fut: Future[bool]) -> bool:
        """Wait for a row without letting a cancelled caller cancel the write."""
        return await asyncio.shield(asyncio.wrap_future(fut))

    def pending(self, request_id: str) -> Future[bool] | None:
        with self._lock:
            return self._pending.get(request_id)

    def drain(self, timeout: float | None = None) -> bool:
        """Block until every queued row is written (or `timeout` passes); True when the queue is empty."""
        if not self.thread.is_alive():
            return self.queue.empty()
        done = threading.Event()
        with self._lock:
            self._markers.append(done)
        self.queue.put(None)  # a marker: the writer sets `done` when it reaches it
        return done.wait(timeout)

    def close(self, timeout: float = 30) -> None:
        """Write what is queued, then stop the writer."""
        self._stop = True
        self.drain(timeout)

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                with self._lock:
                    markers, self._markers = self._markers, []
                for m in markers:
                    m.set()
                if self._stop:
                    return
                continue
            row, fut = item
            fut.set_result(self._write(row))
            with self._lock:
                self._pending.pop(row.request_id, None)

    def _write(self, row: RequestRow) -> bool:
        try:
            self.store.log_request(**vars(self._redacted(row)))
            return True
        except StoreError as e:
            self.metrics.store_failures.labels("requests").inc()
            log.error("%s", e)
        except Exception as e:  # a bug must not kill the writer: the next rows still get stored
            self.metrics.store_failures.labels("requests").inc()
            log.error("store: requests row %s not written: %s", row.request_id, type(e).__name__)
        return False

    def _redacted(self, row: RequestRow) -> RequestRow:
        g = self.guard
        if g is None:
            return row
        row.request = g.redact_record(row.request)
        row.response_text = None if row.response_text is None else g.redact_record(row.response_text)
        row.choices = None if row.choices is None else g.redact_record(row.choices)
        return row
