"""`data.num_proc`: worker processes that encode batches of records in parallel, in order.

Workers are forked once per preparation and inherit the encoder (tokenizer, template) instead of receiving it
pickled; each gets a contiguous share of a batch and returns its outcomes, so the result is the same for any
number of workers. Forked workers must not start the tokenizer's own thread pool, hence TOKENIZERS_PARALLELISM.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

_TASK: Callable[[Sequence[Any]], list[Any]] | None = None  # set in the parent before forking


class Workers:
    """A pool of forked processes running `task` on slices of a batch; one process means no pool at all."""

    def __init__(self, task: Callable[[Sequence[Any]], list[Any]], num_proc: int) -> None:
        self.task, self.num_proc = task, num_proc
        self.pool: Any = None

    def map(self, items: Sequence[Any]) -> list[Any]:
        if self.num_proc <= 1 or len(items) < 2:
            return self.task(items)
        if self.pool is None:
            self.pool = self._start()
        n = -(-len(items) // self.num_proc)
        parts = self.pool.map(_run, [items[i : i + n] for i in range(0, len(items), n)])
        return [x for part in parts for x in part]

    def _start(self) -> Any:
        global _TASK
        _TASK = self.task
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return multiprocessing.get_context("fork").Pool(self.num_proc)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None


def _run(items: Sequence[Any]) -> list[Any]:
    assert _TASK is not None
    return _TASK(items)
