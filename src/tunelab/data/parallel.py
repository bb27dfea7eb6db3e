"""Running one function over the parts of a batch in parallel, results in order: forked worker processes
(`data.num_proc`, `data check --workers`) or Ray Data (`backend: ray`).

Local workers are forked once per preparation and inherit the function (an encoder with its tokenizer and
template) instead of receiving it pickled; each gets a contiguous share of a batch, so the result is the same
for any number of workers. Forked workers must not start the tokenizer's own thread pool, hence
TOKENIZERS_PARALLELISM. With Ray, the parts become a Ray dataset mapped by the same function (shipped with
cloudpickle) with order preserved; Ray is an optional dependency (`pip install 'tunelab[ray]'`), connected
to with `ray.init()`: the cluster of RAY_ADDRESS, or one started on this machine.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from tunelab.errors import TunelabError

BACKENDS = ("local", "ray")
_TASK: Callable[[Sequence[Any]], list[Any]] | None = None  # set in the parent before forking


class Workers:
    """Runs `task` (a list -> a list of the same length) on slices of a batch: in this process, in a pool of
    forked processes, or on Ray Data."""

    def __init__(self, task: Callable[[Sequence[Any]], list[Any]], num_proc: int, backend: str = "local") -> None:
        self.task, self.num_proc, self.backend = task, num_proc, backend
        self.pool: Any = None

    def map(self, items: Sequence[Any]) -> list[Any]:
        if self.backend == "ray":
            return ray_map(self.task, items, max(self.num_proc, 1))
        if self.num_proc <= 1 or len(items) < 2:
            return self.task(items)
        if self.pool is None:
            self.pool = self._start()
        parts = self.pool.map(_run, split(items, self.num_proc))
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


def split(items: Sequence[Any], parts: int) -> list[Sequence[Any]]:
    n = -(-len(items) // max(parts, 1)) or 1
    return [items[i : i + n] for i in range(0, len(items), n)]


def _run(items: Sequence[Any]) -> list[Any]:
    assert _TASK is not None
    return _TASK(items)


def ray_map(task: Callable[[Sequence[Any]], list[Any]], items: Sequence[Any], parts: int) -> list[Any]:
    """`task` over `parts` slices of `items` as a Ray dataset (one row per slice, pickled), in order."""
    ray = _ray()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    rows = [{"part": pickle.dumps(list(p))} for p in split(items, parts)]

    def apply(batch: dict[str, Any]) -> dict[str, Any]:
        return {"out": [pickle.dumps(task(pickle.loads(p))) for p in batch["part"]]}

    out = ray.data.from_items(rows).map_batches(apply, batch_size=1, batch_format="numpy").take_all()
    return [x for row in out for x in pickle.loads(row["out"])]


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise TunelabError("backend ray needs Ray Data: pip install 'ray[data]' (or tunelab[ray])") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    return ray
