"""Iteration-level (continuous) batching: one engine thread, a fair admission queue, join and leave at every step.

The engine thread loops: run pending control calls (adapter load/unload) -> drop cancelled requests ->
admit waiting requests (`FairQueue.take`) and prefill them into the running batch -> one decode step for
every running row -> rows that finished leave and their requests are answered. A request that arrives
while others decode waits for at most one step (plus its own prefill), never for a whole batch.

Fairness policy (`FairQueue`), over *tenants* (the API key id the server passes; without one, the model
id, so one adapter's flood does not starve another's):
- Every tenant has a service counter: its prompt tokens when admitted, plus one per token it decodes. The
  waiting tenant with the least service goes first (fair queuing by tokens); a tenant that was idle
  re-enters at the lowest counter among the active ones, so it gets priority but no banked credit.
- Slots: `max_batch_size` rows run normally. A tenant holding fewer rows than its fair share
  (max_batch_size / tenants with running or waiting work) may also take one of `extra_slots` above it, so
  a newcomer joins at the next step even when a flood holds every normal slot; rows are never preempted.
- Prefill budget: at most `max_prefill_tokens` prompt tokens are admitted per step (always at least one
  request), so a burst of long prompts delays the running rows by a bounded amount per step.
- Within a tenant, requests go in arrival order. A request's `n` choices join together (n slots).
Adapters share one batch (peft mixed-adapter forward), so adapter fairness is the same admission policy.

Control calls run between steps on the engine thread, so an adapter never changes under a forward pass;
`call(fn, ready)` waits until `ready()` holds (an unload waits until no request uses the adapter).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("tunelab.serve")


@dataclass(eq=False)
class Request:
    """One generate() call as the batcher sees it; `payload` is the engine's (rows, callbacks...)."""

    tenant: Hashable
    slots: int  # rows it occupies (n)
    cost: int  # prompt tokens (charged to the tenant at admission)
    payload: Any
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set from the event loop when the awaiting task is cancelled


class Core(Protocol):
    """What the batcher drives (the engine's decoding state)."""

    def join(self, requests: list[Request]) -> None: ...  # prefill and add to the running batch

    def step(self) -> Counter: ...  # one decode step; returns tokens decoded per tenant

    def active(self) -> Counter: ...  # running rows per tenant

    def busy(self) -> bool: ...

    def drop(self, requests: list[Request]) -> None: ...  # answer requests that never joined (cancelled)

    def fail_all(self, message: str) -> None: ...


class FairQueue:
    def __init__(self, max_batch_size: int, extra_slots: int | None = None, max_prefill_tokens: int = 8192) -> None:
        self.max_batch_size = max_batch_size
        self.extra_slots = max(1, max_batch_size // 4) if extra_slots is None else extra_slots
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: dict[Hashable, deque[Request]] = {}
        self.served: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def __iter__(self) -> Iterator[Request]:
        for q in self.waiting.values():
            yield from q

    def push(self, req: Request) -> None:
        self.waiting.setdefault(req.tenant, deque()).append(req)

    def remove(self, pred: Callable[[Request], bool]) -> list[Request]:
        out = []
        for tenant, q in list(self.waiting.items()):
            keep = deque(r for r in q if not pred(r))
            out += [r for r in q if pred(r)]
            self.waiting[tenant] = keep
            if not keep:
                del self.waiting[tenant]
        return out

    def charge(self, used: Counter) -> None:
        for tenant, n in used.items():
            self.served[tenant] = self.served.get(tenant, 0.0) + n

    def take(self, active: Counter) -> list[Request]:
        """The waiting requests that join the running batch now (see the module docstring)."""
        contending = set(active) | set(self.waiting)
        self._enter(contending)
        share = max(1, self.max_batch_size // max(1, len(contending)))
        total, budget = sum(active.values()), self.max_prefill_tokens
        out: list[Request] = []
        running = Counter(active)
        while self.waiting:
            pick = None
            for tenant in sorted(self.waiting, key=lambda t: self.served.get(t, 0.0)):
                req = self.waiting[tenant][0]
                normal = total + req.slots <= self.max_batch_size
                extra = (
                    running[tenant] + req.slots <= share and total + req.slots <= self.max_batch_size + self.extra_slots
                )
                if (normal or extra) and (req.cost <= budget or not out):
                    pick = tenant
                    break
            if pick is None:
                break
            req = self.waiting[pick].popleft()
            if not self.waiting[pick]:
                del self.waiting[pick]
            out.append(req)
            total, budget = total + req.slots, budget - req.cost
            running[pick] += req.slots
            self.served[pick] = self.served.get(pick, 0.0) + req.cost
        return out

    def _enter(self, contending: set[Hashable]) -> None:
        """Forget idle tenants; a tenant (re)entering starts at the lowest counter of those already in."""
        present = {t: v for t, v in self.served.items() if t in contending}
        floor = min(present.values(), default=0.0)
        self.served = {t: present.get(t, floor) for t in contending}


class Batcher:
    """The engine thread and its queue. `submit` and `call` are safe from any thread."""

    def __init__(self, core: Core, queue: FairQueue, wait_ms: float = 5.0) -> None:
        self.core, self.queue, self.wait_s = core, queue, wait_ms / 1000
        self.cv = threading.Condition()
        self.controls: list[tuple[Callable[[], Any], Callable[[], bool], Future]] = []
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)
        self.thread.start()

    def submit(self, req: Request) -> None:
        with self.cv:
            if self.closed:
                raise RuntimeError("the engine is closed")
            self.queue.push(req)
            self.cv.notify()

    def wake(self) -> None:
        with self.cv:
            self.cv.notify()

    def call(self, fn: Callable[[], Any], ready: Callable[[], bool] = lambda: True) -> Future:
        """Run `fn` on the engine thread between steps, once `ready()` holds; a concurrent Future of its result."""
        fut: Future = Future()
        with self.cv:
            self.controls.append((fn, ready, fut))
            self.cv.notify()
        return fut

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()
        self.thread.join(timeout=10)

    def pending(self) -> list[Request]:
        with self.cv:
            return list(self.queue)

    # ------------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.closed and not len(self.queue) and not self.core.busy():
                    if any(ready() for _, ready, _ in self.controls):
                        break
                    self.cv.wait(0.05 if self.controls else None)
                if self.closed:
                    break
                self._gather()
                controls = [c for c in self.controls if c[1]()]
                self.controls = [c for c in self.controls if c not in controls]
                dropped = self.queue.remove(lambda r: r.cancelled)
                joining = self.queue.take(self.core.active())
            try:
                self._run(controls, dropped, joining)
            except Exception as e:  # never let the engine thread die: fail what runs, keep serving
                log.exception("engine step failed")
                self.core.fail_all(f"engine error: {type(e).__name__}: {e}")
        self.core.fail_all("the engine was closed")
        for req in self.queue.remove(lambda r: True):
            self.core.drop([req])
        for _, _, fut in self.controls:
            fut.cancel()

    def _gather(self) -> None:
        """When idle, give a burst of arrivals `wait_ms` to come in and share the first prefill."""
        if self.core.busy() or not len(self.queue) or self.wait_s <= 0:
            return
        first = min(r.arrived for r in self.queue)
        while (left := first + self.wait_s - time.monotonic()) > 0 and not self.closed:
            self.cv.wait(left)

    def _run(self, controls: list, dropped: list[Request], joining: list[Request]) -> None:
        for fn, _, fut in controls:
            try:
                fut.set_result(fn())
            except Exception as e:
                fut.set_exception(e)
        if dropped:
            self.core.drop(dropped)
        if joining:
            self.core.join(joining)
        if self.core.busy():
            used = self.core.step()
            with self.cv:
                self.queue.charge(used)
