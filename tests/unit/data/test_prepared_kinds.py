"""The one preparation skeleton: the memory-mapped SFT store, warm starts that parse nothing, workers that change
nothing, dropping before tokenizing that changes nothing, and every kind's items typed by its Kind."""

import json

import numpy as np
import pytest

from tunelab.config import load_config
from tunelab.data import prepared as prepared_module
from tunelab.data.pipeline import SFTKind, prepare
from tunelab.data.store import ExampleSeq
from tunelab.data.tokenize import Encoder, chat_template_for
from tunelab.models.presets import byte_tokenizer

ROWS = [{"instruction": f"question {i} " + "x" * (i % 7), "output": f"answer {i} " + "y" * (i * 13 % 90)}
        for i in range(40)]  # fmt: skip


def make_cfg(tmp_path, rows=ROWS, **data):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"data.train=[{{path: {p}, weight: 1.5}}]", f"data.cache_dir={tmp_path / 'cache'}"]
    return load_config(None, overrides + [f"data.{k}={json.dumps(v)}" for k, v in data.items()])


def examples(p):
    return [(e.input_ids, e.labels) for e in p.train], [(e.input_ids, e.labels) for e in p.eval]


def test_items_are_read_from_int32_memory_maps(tmp_path):
    p = prepare(make_cfg(tmp_path, eval_ratio=0.2), byte_tokenizer())
    assert isinstance(p.train, ExampleSeq) and p.train.ids.dtype == np.int32
    assert isinstance(p.train.ids, np.memmap)
    assert p.stats[0].train == len(p.train) == 48  # weight 1.5 over the 32 left after the eval split
    assert p.stats[0].tokens == sum(len(e.input_ids) for e in [*p.train, *p.eval])


def test_a_warm_start_parses_no_record(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, eval_ratio=0.2)
    cold = prepare(cfg, byte_tokenizer())

    def fail(*args, **kwargs):
        raise AssertionError("a warm start read the records")

    monkeypatch.setattr(prepared_module, "iter_records", fail)
    warm = prepare(cfg, byte_tokenizer())
    assert warm.cached and examples(warm) == examples(cold)
    assert warm.report()["datasets"] == cold.report()["datasets"]


def test_workers_give_the_same_examples(tmp_path):
    one = prepare(make_cfg(tmp_path, eval_ratio=0.2), byte_tokenizer(), use_cache=False)
    two = prepare(make_cfg(tmp_path, eval_ratio=0.2, num_proc=2), byte_tokenizer(), use_cache=False)
    assert examples(one) == examples(two) and one.report() == two.report()


def test_dropping_before_tokenizing_changes_nothing(tmp_path):
    cfg = make_cfg(tmp_path, max_length=40, truncation="drop")
    tok = byte_tokenizer()
    kind = SFTKind(Encoder(tok, chat_template_for(tok)), cfg.data, tmp_path / "store")
    assert kind.max_chars > 0  # the byte tokenizer's longest token bounds the characters
    records = [prepared_module.FORMATS["alpaca"](r) for r in ROWS]
    fast = kind.encode_records(records)
    kind.max_chars = 0  # every text tokenized
    slow = kind.encode_records(records)
    assert [o[1:] for o in fast] == [o[1:] for o in slow]
    assert sum(1 for o in fast if o.item is None) > 0


def test_batched_labels_equal_the_per_token_rule(tmp_path):
    tok = byte_tokenizer()
    enc = Encoder(tok, chat_template_for(tok))
    for row in ROWS[:5] + [{"instruction": "héllo wörld 日本", "output": "ça va 日本語 ok"}]:
        rec = prepared_module.FORMATS["alpaca"](row)
        text, spans = enc.text(rec)
        full = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        rule = [
            t if any(s <= a < e for s, e in spans) else -100 for t, (a, _) in zip(full.input_ids, full.offset_mapping)
        ]
        ex = enc.encode(rec)
        assert (ex.input_ids, ex.labels) == (full.input_ids, rule)


@pytest.mark.parametrize("kind", ["pairs", "prompts"])
def test_other_kinds_run_the_same_skeleton(tmp_path, kind):
    from tunelab.data.prepare import prepare_data

    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    cfg = make_cfg(tmp_path, rows, eval_ratio=0.2)
    p = prepare_data(cfg, byte_tokenizer(), kind)
    assert (len(p.train), len(p.eval)) == (12, 2) and p.stats[0].train == 12
    if kind == "prompts":  # a repeated record is its own item with its own index
        assert sorted(it.index for it in [*p.train, *p.eval]) == list(range(14))


def _list_split(counts, weights, eval_ratio, seed):
    """The split as it was made on Python lists (before the index arrays): the reference it must equal."""
    import random

    rng = random.Random(seed)
    train, evals = [], []
    for d, (n, w) in enumerate(zip(counts, weights)):
        order = list(range(n))
        rng.shuffle(order)
        n_eval = round(len(order) * eval_ratio)
        evals += [(d, i) for i in sorted(order[:n_eval])]
        keep = sorted(order[n_eval:])
        target = round(w * len(keep))
        picked = keep * (target // len(keep)) + rng.sample(keep, target % len(keep)) if keep else []
        train += [(d, i) for i in picked]
    rng.shuffle(train)
    return train, evals


@pytest.mark.parametrize(
    ("counts", "weights", "eval_ratio"),
    [
        ([1000], [1.0], 0.0),
        ([500, 37], [0.3, 2.6], 0.1),
        ([0, 5, 300], [1.0, 3.0, 1.0], 0.5),
        ([2, 1], [0.5, 1.0], 0.5),
    ],
)
def test_the_index_split_is_the_list_split(counts, weights, eval_ratio):
    for seed in (0, 7):
        train, evals = prepared_module.split_indices(counts, weights, eval_ratio, seed)
        assert train.dtype == evals.dtype == np.int64
        assert (train.tolist(), evals.tolist()) == tuple(
            [list(p) for p in pairs] for pairs in _list_split(counts, weights, eval_ratio, seed)
        )


def test_counting_in_blocks_changes_nothing(tmp_path, monkeypatch):
    second = tmp_path / "e.jsonl"
    second.write_text("".join(json.dumps(r) + "\n" for r in ROWS[::3]))
    cfg = make_cfg(tmp_path, max_length=40, eval_ratio=0.2, eval=[{"path": str(second)}])
    whole = prepare(cfg, byte_tokenizer(), use_cache=False)
    monkeypatch.setattr(prepared_module, "COUNT_BLOCK", 7)  # many blocks, the last one short
    blocks = prepare(cfg, byte_tokenizer(), use_cache=False)
    assert examples(blocks) == examples(whole) and blocks.eval_tasks == whole.eval_tasks
    assert blocks.report() == whole.report()
    assert [s.lengths.tolist() for s in blocks.stats] == [s.lengths.tolist() for s in whole.stats]
    assert whole.stats[0].truncated > 0 and len(whole.eval) > len(ROWS[::3])  # both splits, cut records counted
