"""The batch plan: deterministic, complete, equal across processes, and accumulation-equivalent."""

from __future__ import annotations

import random

from tunelab.train.plan import Plan, eval_batches, packing_note


def make(world: int = 1, accum: int = 1, bs: int = 4, group: bool = True, n: int = 37) -> Plan:
    rng = random.Random(1)
    lengths = [rng.randrange(5, 200) for _ in range(n)]
    return Plan(
        lengths=lengths,
        counts=[x - 3 for x in lengths],
        batch_size=bs,
        grad_accum=accum,
        world=world,
        seed=7,
        group_by_length=group,
    )


def test_epoch_covers_every_item_once_and_is_deterministic() -> None:
    plan = make()
    items = [i for b in plan.epoch_batches(0) for i in b]
    assert sorted(items) == list(range(37))
    assert make().epoch_batches(0) == plan.epoch_batches(0)
    assert plan.epoch_batches(1) != plan.epoch_batches(0)  # reshuffled per epoch


def test_length_grouping_reduces_padding() -> None:
    def padding(p: Plan) -> int:
        return sum(len(b) * max(p.lengths[i] for i in b) - sum(p.lengths[i] for i in b) for b in p.epoch_batches(0))

    assert padding(make(group=True)) < 0.5 * padding(make(group=False))


def test_processes_get_equal_micro_batches_and_together_match_accumulation() -> None:
    two = make(world=2, accum=1)
    one = make(world=1, accum=2)
    assert two.steps_per_epoch == one.steps_per_epoch
    for step in range(two.steps_per_epoch):
        r0, r1 = two.micro_batches(step, 0), two.micro_batches(step, 1)
        assert len(r0) == len(r1) == 1
        assert sorted(r0 + r1) == sorted(one.micro_batches(step, 0))
        assert two.step_units(step) == one.step_units(step)


def test_step_units_sum_counts_and_lengths() -> None:
    plan = make(accum=3)
    units, tokens = plan.step_units(0)
    idx = [i for b in plan.micro_batches(0, 0) for i in b]
    assert (units, tokens) == (sum(plan.counts[i] for i in idx), sum(plan.lengths[i] for i in idx))


def test_total_steps_and_later_epochs() -> None:
    plan = make(bs=4, accum=2)  # 10 batches -> 5 steps per epoch
    assert plan.steps_per_epoch == 5
    assert plan.total_steps(2.5, None) == 13 and plan.total_steps(1, 3) == 3
    assert plan.micro_batches(5, 0) == plan.epoch_batches(1)[:2]


def test_eval_batches_pad_with_unreal_repeats() -> None:
    lengths = [5] * 10
    ranks = [eval_batches(lengths, 3, 3, r) for r in range(3)]  # 4 batches over 3 ranks -> 6 slots
    assert [len(b) for b in ranks] == [2, 2, 2]
    real = [i for r in ranks for b, ok in r if ok for i in b]
    assert sorted(real) == list(range(10))


def test_packing_note_counts_steps_and_the_batch_size_that_keeps_them() -> None:
    note = packing_note([2, 1, 1, 2] * 10, batch_size=4, accum_world=1)  # 60 examples in 40 rows
    assert "60 examples in 40 rows (1.50 per row)" in note
    assert "10 optimizer steps per epoch, 15 unpacked" in note
    assert "train.batch_size 3 keeps" in note  # 3 rows hold ~4 examples
    assert "4 optimizer steps per epoch, 5 unpacked" in packing_note([2, 1, 1, 2] * 10, 4, accum_world=3)
