"""Dynamic batching: an asyncio queue that gathers concurrent requests for a few ms and runs them together.

Requests are grouped by a key (the adapter: one forward pass runs one adapter) and each group runs as one
batch on a single worker thread. One thread because the model is one: batches and adapter load/unload are
serialized on it, so an adapter never changes under a running batch, and the event loop stays free to
accept requests (which queue up and form the next batch while the current one decodes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Job:
    key: Hashable
    payload: Any
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    def __init__(
        self,
        run_group: Callable[[Any, list[Any]], list[Any]],  # (group key, its rows) -> the rows, decoded
        max_batch_size: int = 16,
        wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run_group, self.max_batch_size, self.wait_s = run_group, max_batch_size, wait_ms / 1000
        self.on_batch = on_batch
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunelab-engine")
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, key: Hashable, payload: Any) -> Any:
        self.start()
        job = Job(key, payload)
        await self.queue.put(job)
        return await job.future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the engine thread, between batches (for adapter load/unload)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _loop(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(jobs) < self.max_batch_size * 4:  # gather a few batches' worth; groups are cut below
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic())))
                except asyncio.TimeoutError:
                    break
            groups: dict[Hashable, list[Job]] = {}
            for job in jobs:
                if not job.future.cancelled():
                    groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                for i in range(0, len(group), self.max_batch_size):
                    await self._run(key, group[i : i + self.max_batch_size])

    async def _run(self, key: Hashable, jobs: list[Job]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.pool, self.run_group, key, [j.payload for j in jobs])
        except Exception as e:  # one bad batch fails its requests, not the server
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        for j, r in zip(jobs, results, strict=True):
            if not j.future.done():
                j.future.set_result(r)
