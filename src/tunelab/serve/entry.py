"""A completion request's one row: created when the route starts, written exactly once whatever happens.

Every completion request that reaches its route (authenticated, body valid) gets one row: answered
(200), refused (400 guard/limits, 404 model), timed out (504), failed (500), or abandoned by its client
(499, nginx's "client closed request", with `finish_reason` "cancelled"). `write` is synchronous (it
queues the row, recorder.py), so it can run in a `finally` or a done-callback of a request whose task
was cancelled. Metrics are counted here too, once per request.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tunelab.serve.deps import RequestContext
from tunelab.serve.guard import Decision
from tunelab.serve.recorder import RequestRow
from tunelab.serve.state import ServerState

CLIENT_CLOSED = 499


@dataclass
class ChoiceOut:
    index: int
    text: str
    finish_reason: str | None
    completion_tokens: int = 0
    tool_calls: list[dict[str, Any]] | None = None

    def stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "text": self.text, "finish_reason": self.finish_reason}
        return out | ({"tool_calls": self.tool_calls} if self.tool_calls else {})


class Entry:
    def __init__(self, state: ServerState, ctx: RequestContext, model: str, record: dict[str, Any]) -> None:
        self.state, self.ctx, self.model, self.record = state, ctx, model, record
        self.adapter = model if model != state.base and model in state.engine.model_ids() else None
        self.decisions: list[Decision] = []
        self.future: Future[bool] | None = None

    @property
    def written(self) -> bool:
        return self.future is not None

    def count(self, decisions: list[Decision]) -> list[Decision]:
        for d in decisions:
            self.state.metrics.guard.labels(d.stage, d.rule, d.action).inc()
        self.decisions += decisions
        return decisions

    def write(
        self,
        status: int,
        choices: list[ChoiceOut] | None = None,
        prompt_tokens: int | None = None,
        finish: str | None = None,
    ) -> Future[bool]:
        """Count and queue the row (once; later calls return the first one's future)."""
        if self.future is not None:
            return self.future
        elapsed = time.perf_counter() - self.ctx.start
        m = self.state.metrics
        m.requests.labels(self.ctx.endpoint, str(status)).inc()
        if status == 200:
            m.latency.labels(self.ctx.endpoint).observe(elapsed)
        if status == CLIENT_CLOSED:
            m.disconnects.labels(self.ctx.endpoint).inc()
        tokens = sum(c.completion_tokens for c in choices) if choices else None
        if tokens:
            m.tokens.labels(self.model).inc(tokens)
        if self.state.recorder is None:
            self.future = Future()
            self.future.set_result(False)
            return self.future
        first = choices[0] if choices else None
        several = choices is not None and (len(choices) > 1 or any(c.tool_calls for c in choices))
        row = RequestRow(
            request_id=self.ctx.request_id,
            api_key_id=self.ctx.key_id,
            endpoint=self.ctx.endpoint,
            model=self.model,
            adapter=self.adapter,
            request=self.record,
            response_text=first.text if first else None,
            finish_reason=finish or (first.finish_reason if first else None),
            prompt_tokens=prompt_tokens,
            completion_tokens=tokens,
            latency_ms=elapsed * 1000,
            status=status,
            decisions=list(self.decisions),
            choices=[c.stored() for c in choices] if several and choices else None,
        )
        self.future = self.state.recorder.submit(row)
        return self.future

    async def stored(self) -> None:
        """Wait until the row is in the store (so feedback can name it), shielded from cancellation."""
        if self.future is not None and self.state.recorder is not None:
            await self.state.recorder.stored(self.future)
