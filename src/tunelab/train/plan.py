"""Which items go into which micro-batch of which optimizer step, on which process.

The plan is a pure function of (seed, epoch, step), independent of the global RNG, so a resumed run
reads exactly the batches an uninterrupted run would have read: the data position is just the step.
Every process computes the whole plan, which also gives each step's global count of loss units on the
host with no communication (the loss normalizer of gradient accumulation across processes).

Per epoch: shuffle; with length grouping, sort each mega-batch of 64 batches by length so a batch has
little padding, then shuffle the batch order again. The batch list is padded by wrapping around to a
multiple of the process count (as DistributedSampler does), so every process runs the same number of
micro-batches. A step takes `grad_accum * world` consecutive batches; rank r takes every world-th one,
so one process with grad_accum k*w sees the same examples per step as w processes with grad_accum k.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

MEGA = 64  # batches per length-grouping window: big enough to group, small enough to stay random


@dataclass
class Plan:
    lengths: list[int]  # tokens per item
    counts: list[int]  # loss units per item (from Method.count)
    batch_size: int
    grad_accum: int
    world: int = 1
    seed: int = 0
    group_by_length: bool = True
    _cache: dict[int, list[list[int]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.n_batches = math.ceil(len(self.lengths) / self.batch_size)
        self.n_batches += (-self.n_batches) % self.world
        self.steps_per_epoch = math.ceil(self.n_batches / (self.grad_accum * self.world))

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        return max_steps if max_steps else max(1, math.ceil(epochs * self.steps_per_epoch))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            self._cache = {epoch: self._make_batches(epoch)}  # keep one epoch: plans can be large
        return self._cache[epoch]

    def _make_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"tunelab-{self.seed}-{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        bs = self.batch_size
        if self.group_by_length:
            window = bs * MEGA
            order = [
                i
                for s in range(0, len(order), window)
                for i in sorted(order[s : s + window], key=lambda j: -self.lengths[j])
            ]
        batches = [order[s : s + bs] for s in range(0, len(order), bs)]
        if self.group_by_length:
            rng.shuffle(batches)
        wrap = self.n_batches - len(batches)
        return batches + batches[:wrap]

    def _step_batches(self, step: int) -> list[list[int]]:
        epoch, j = divmod(step, self.steps_per_epoch)
        per_step = self.grad_accum * self.world
        return self.epoch_batches(epoch)[j * per_step : (j + 1) * per_step]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This process's micro-batches (item indices) for an optimizer step."""
        return self._step_batches(step)[rank :: self.world]

    def step_units(self, step: int) -> tuple[int, int]:
        """(loss units, input tokens) of a step summed over all processes."""
        idx = [i for b in self._step_batches(step) for i in b]
        return sum(self.counts[i] for i in idx), sum(self.lengths[i] for i in idx)

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch


def packing_note(examples_per_row: list[int], batch_size: int, accum_world: int) -> str:
    """What packing does to the schedule: a row holds several examples, so a batch of `batch_size` rows trains
    on more examples and an epoch takes fewer optimizer steps than unpacked (which, at the same lr, can leave
    a short run less trained). Says which batch_size keeps about the unpacked number of steps."""
    n, rows = sum(examples_per_row), len(examples_per_row)
    packed, unpacked = (math.ceil(math.ceil(k / batch_size) / accum_world) for k in (rows, n))
    same = max(1, round(batch_size * rows / n))
    return (
        f"packing: {n} examples in {rows} rows ({n / rows:.2f} per row); {packed} optimizer steps per epoch, "
        f"{unpacked} unpacked at the same batch_size; train.batch_size {same} keeps about the unpacked steps"
    )


def eval_batches(lengths: list[int], batch_size: int, world: int, rank: int) -> list[tuple[list[int], bool]]:
    """This process's eval batches, sorted by length; (indices, real) with padding repeats marked unreal
    so every process runs the same number of forwards (DDP/FSDP collectives must line up)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = [(order[s : s + batch_size], True) for s in range(0, len(order), batch_size)]
    if batches:
        batches += [(batches[0][0], False)] * ((-len(batches)) % world)
    return batches[rank::world]
