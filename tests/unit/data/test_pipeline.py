"""The pipeline end to end on tiny data: counts, split, mixing weights, truncation policy, cache, masking check."""

import json

import pytest

from tunelab.config import load_config
from tunelab.data.pipeline import prepare, split_and_mix
from tunelab.errors import DataError
from tunelab.models.presets import byte_tokenizer


def make_cfg(tmp_path, rows, **data):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"data.train=[{{path: {p}}}]", f"data.cache_dir={tmp_path / 'cache'}"]
    overrides += [f"data.{k}={json.dumps(v)}" for k, v in data.items()]
    return load_config(None, overrides)


ROWS = [{"instruction": f"q{i}", "output": f"answer {i}"} for i in range(20)]


def test_counts_and_eval_split(tmp_path):
    p = prepare(make_cfg(tmp_path, ROWS, eval_ratio=0.25), byte_tokenizer())
    assert (len(p.train), len(p.eval)) == (15, 5)
    s = p.stats[0]
    assert (s.records, s.train, s.eval, s.format) == (20, 15, 5, "alpaca")
    assert s.trainable_tokens == sum(e.n_trainable for e in p.train + p.eval)


def test_second_run_uses_the_cache_and_gives_the_same_examples(tmp_path):
    cfg = make_cfg(tmp_path, ROWS, eval_ratio=0.2)
    first, second = prepare(cfg, byte_tokenizer()), prepare(cfg, byte_tokenizer())
    assert not first.cached and second.cached
    assert [e.input_ids for e in first.train] == [e.input_ids for e in second.train]
    assert [e.labels for e in first.eval] == [e.labels for e in second.eval]
    assert second.report()["datasets"][0]["train"] == 16


def test_truncate_and_drop_are_counted(tmp_path):
    rows = [*ROWS[:3], {"instruction": "q", "output": "x" * 200}]
    t = prepare(make_cfg(tmp_path, rows, max_length=64), byte_tokenizer()).stats[0]
    assert (t.truncated, t.dropped_too_long, t.train) == (1, 0, 4)
    d = prepare(make_cfg(tmp_path, rows, max_length=64, truncation="drop"), byte_tokenizer()).stats[0]
    assert (d.truncated, d.dropped_too_long, d.train) == (0, 1, 3)


def test_examples_with_no_trainable_token_are_counted_and_mostly_masked_data_fails(tmp_path):
    long_prompt = {"instruction": "p" * 100, "output": "a"}
    s = prepare(make_cfg(tmp_path, [*ROWS[:3], long_prompt], max_length=64), byte_tokenizer()).stats[0]
    assert (s.fully_masked, s.train) == (1, 3)
    with pytest.raises(DataError, match="4 of 5 examples have no trainable token"):
        prepare(make_cfg(tmp_path, [ROWS[0], *[long_prompt] * 4], max_length=64), byte_tokenizer())


def test_mixing_weights():
    a, b = list(range(10)), list(range(100, 104))
    train, evals = split_and_mix([a, b], [0.5, 2.0], 0.0, seed=1)
    counts = {0: 0, 1: 0}
    for d, _ in train:
        counts[d] += 1
    assert counts == {0: 5, 1: 8} and not evals
    assert sorted(r for d, r in train if d == 1) == sorted(b * 2)


def test_preference_data_is_refused_for_sft_with_a_clear_message(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError, match="Preference records .* not method sft"):
        prepare(make_cfg(tmp_path, rows), byte_tokenizer())
