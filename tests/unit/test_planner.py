"""The planner: counts from the model skeleton, memory terms against hand computations, time, advice."""

from __future__ import annotations

import pytest

from tunelab.config import RunConfig
from tunelab.models.presets import build_preset
from tunelab.models.tuning import apply_tuning, count_parameters
from tunelab.planner import DataCounts, estimate, render
from tunelab.planner.devices import DEVICES
from tunelab.planner.shape import shape_of

COUNTS = DataCounts(train_examples=64, train_tokens=64 * 100, eval_examples=8, eval_tokens=800, max_len=128,
                    labelled=0.5)  # fmt: skip


def cfg(**sections: dict) -> RunConfig:
    return RunConfig.model_validate({"model": {"name_or_path": "tiny"}} | sections)


@pytest.mark.parametrize("mode", ["full", "freeze", "lora"])
def test_the_meta_skeleton_counts_what_the_real_model_trains(mode: str):
    c = cfg(tuning={"mode": mode})
    model, _ = build_preset("tiny")
    trainable, total = count_parameters(apply_tuning(model, c.tuning))
    shape = shape_of(c)
    assert (shape.trainable, shape.params) == (trainable, total)
    assert shape.layers == 2 and shape.hidden == 64 and shape.intermediate == 176


def test_memory_terms_match_a_hand_computation():
    c = cfg(tuning={"mode": "full"}, train={"batch_size": 4})
    est = estimate(c, COUNTS, runtime_bytes=100.0)
    s = est.shape
    assert est.memory["runtime"] == 100.0
    assert est.memory["weights"] == s.base_params * 4  # fp32 master weights
    assert est.memory["gradients"] == s.trainable * 4 and est.memory["optimizer"] == s.trainable * 8
    h, inter, tokens = 64, 176, 4 * 128  # kv heads 2 of 4: kv_dim 32
    saved = 2 * tokens * (2 * (8 * h + 3 * 32 + 4 * inter) + 2 * h)  # 2 blocks; CPU: counted twice (heap retention)
    assert est.memory["activations"] == (saved + tokens * (2 * h + 2 * inter)) * 4
    assert est.memory["logits"] == 3 * tokens * 0.5 * s.vocab * 4
    assert est.peak == sum(est.memory.values())


def test_checkpointing_and_smaller_batches_cut_activations_and_lora_cuts_optimizer_state():
    base = estimate(cfg(tuning={"mode": "full"}), COUNTS, runtime_bytes=0)
    ckpt = estimate(cfg(tuning={"mode": "full"}, train={"gradient_checkpointing": True}), COUNTS, runtime_bytes=0)
    half = estimate(cfg(tuning={"mode": "full"}, train={"batch_size": 4}), COUNTS, runtime_bytes=0)
    lora = estimate(cfg(tuning={"mode": "lora"}), COUNTS, runtime_bytes=0)
    assert ckpt.memory["activations"] < base.memory["activations"]
    assert half.memory["activations"] == pytest.approx(base.memory["activations"] / 2)
    assert lora.memory["optimizer"] < base.memory["optimizer"] / 2


def test_qlora_stores_the_base_in_about_4_bits_on_a_gpu():
    lora = estimate(cfg(tuning={"mode": "lora"}), COUNTS, device="a100-40gb")
    q = estimate(cfg(tuning={"mode": "qlora"}), COUNTS, device="a100-40gb")
    assert q.memory["weights"] < lora.memory["weights"] and lora.memory["runtime"] == 0.6 * 2**30


def test_steps_tokens_and_time_follow_the_data_and_the_device():
    c = cfg(tuning={"mode": "lora"}, data={"packing": True, "max_length": 128}, train={"epochs": 2, "batch_size": 5})
    est = estimate(c, COUNTS, device="l4", price_per_hour=2.0)
    rows = 64 * 100 // 128  # 50 packed rows of 128 tokens
    assert est.steps == 2 * -(-rows // 5) and est.tokens == est.steps * 5 * 128
    fast = estimate(c, COUNTS, device="h100-80gb")
    assert fast.seconds["train"] < est.seconds["train"]
    assert est.cost == pytest.approx(est.total_seconds / 3600 * 2.0)
    assert DEVICES["l4"].name in est.summary() and "fits" in est.summary()


def test_advice_when_it_does_not_fit():
    big = cfg(model={"name_or_path": "tiny-30m"}, tuning={"mode": "full"}, train={"batch_size": 64})
    counts = DataCounts(1000, 1000 * 4096, 10, 40960, 4096, 1.0)
    est = estimate(big, counts, device="t4")
    text = "\n".join(render(est))
    assert not est.fits and "does not fit" in text
    assert "gradient_checkpointing" in text and "train.batch_size 32 with train.grad_accum 2" in text
    assert "tuning.mode: lora" in text and "qlora" in text


def test_calibration_measures_a_positive_time_on_this_machine():
    c = cfg(tuning={"mode": "lora"}, train={"batch_size": 2})
    est = estimate(c, COUNTS, calibrate=True)
    assert est.seconds_micro > 0 and "measured" in est.throughput
