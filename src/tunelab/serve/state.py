"""What every route shares: the engine, the config, keys, guard, metrics, limiter and store, in one object.

It hangs on `app.state.tunelab`; routes reach it through the `get_state` dependency (deps.py), so a router
can be mounted on any FastAPI app that has one (see `app.assemble`). It also tracks requests in flight per
model, which unloading an adapter waits on (drain), and the adapters being unloaded (no new requests).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from tunelab.serve.config import ServeConfig
from tunelab.serve.engine import Engine
from tunelab.serve.guard import Guard
from tunelab.serve.metrics import Metrics
from tunelab.serve.recorder import Recorder
from tunelab.serve.security import KeyRing, RateLimiter
from tunelab.serve.store import Store


class Abortable(Protocol):
    @property
    def model(self) -> str: ...

    def abort(self, reason: str) -> None: ...


@dataclass
class ServerState:
    engine: Engine
    cfg: ServeConfig
    keys: KeyRing
    guard: Guard
    metrics: Metrics
    limiter: RateLimiter
    store: Store | None = None
    recorder: Recorder | None = None
    inflight: Counter[str] = field(default_factory=Counter)  # model id -> requests generating
    active: set[Abortable] = field(default_factory=set)  # those requests, to end them on unload
    unloading: set[str] = field(default_factory=set)
    idle: asyncio.Event | None = None  # set whenever a model's in-flight count drops

    @classmethod
    def build(cls, engine: Engine, cfg: ServeConfig, keys: KeyRing, store: Store | None = None) -> ServerState:
        guard, metrics = Guard(cfg.guard), Metrics()
        if hasattr(engine, "on_batch"):
            engine.on_batch = metrics.batch_size.observe
        if store is not None:
            store.retries = cfg.store.retries
        recorder = None
        if store is not None:
            recorder = Recorder(store, metrics, guard if cfg.store.redact_pii else None)
        limiter = RateLimiter(cfg.limits.requests_per_minute, cfg.limits.burst)
        return cls(engine, cfg, keys, guard, metrics, limiter, store, recorder)

    @property
    def base(self) -> str:
        return self.engine.model_ids()[0]

    def served(self) -> list[str]:
        return [m for m in self.engine.model_ids() if m not in self.unloading]

    def begin(self, call: Abortable) -> None:
        self.inflight[call.model] += 1
        self.active.add(call)
        self.metrics.in_flight.inc()

    def end(self, call: Abortable) -> None:
        self.inflight[call.model] -= 1
        self.active.discard(call)
        self.metrics.in_flight.dec()
        if self.idle is not None:
            self.idle.set()

    def abort(self, model: str, reason: str) -> None:
        """End every request generating from `model` (each stops at its next token, with `reason`)."""
        for call in [c for c in self.active if c.model == model]:
            call.abort(reason)

    async def drain(self, model: str, timeout: float) -> bool:
        """Wait until no request for `model` is generating (True) or `timeout` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.inflight[model] > 0:
            self.idle = self.idle or asyncio.Event()
            self.idle.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.idle.wait(), left)
            except asyncio.TimeoutError:
                return False
        return True
