"""Evaluation runner and comparison: a model vs itself is not different; a short fine-tune is a real gain."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tunelab.config import DatasetConfig, EvalConfig
from tunelab.data.records import Conversation, Message
from tunelab.data.tokenize import IGNORE, Encoder, chat_template_for
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.eval.compare import compare_results
from tunelab.eval.runner import EvalExample, EvalResult, evaluate, load_examples
from tunelab.models.presets import build_preset
from tunelab.scoring.metrics import MetricResult

ANIMALS = {"cat": "meow", "dog": "woof", "cow": "moo", "duck": "quack", "owl": "hoot", "sheep": "baa"}
EXAMPLES = [EvalExample([{"role": "user", "content": f"What does a {k} say?"}], v, f"mem#{i}")
            for i, (k, v) in enumerate(ANIMALS.items())] * 4  # fmt: skip
CFG = EvalConfig(metrics=["exact_match", "loss"], max_new_tokens=8, batch_size=8, bootstrap_resamples=2000)


def _finetune(model, tok, steps: int = 120) -> None:
    """A few dozen AdamW steps on the eval examples themselves: the smallest real improvement."""
    enc = Encoder(tok, chat_template_for(tok))
    exs = [enc.encode(Conversation((Message("user", e.prompt[0]["content"]), Message("assistant", e.reference))))
           for e in EXAMPLES[: len(ANIMALS)]]  # fmt: skip
    width = max(len(e.input_ids) for e in exs)
    ids = torch.tensor([e.input_ids + [tok.pad_token_id] * (width - len(e.input_ids)) for e in exs])
    labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in exs])
    mask = (torch.arange(width)[None] < torch.tensor([len(e.input_ids) for e in exs])[:, None]).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.fixture(scope="module")
def results():
    model, tok = build_preset("tiny", seed=0)
    base = evaluate(model, tok, EXAMPLES, CFG, name="base", progress=False)
    again = evaluate(model, tok, EXAMPLES, CFG, name="base-again", progress=False)
    tuned = copy.deepcopy(model)
    _finetune(tuned, tok)
    after = evaluate(tuned, tok, EXAMPLES, CFG, name="tuned", progress=False)
    return base, again, after


def test_model_vs_itself_is_not_significant(results) -> None:
    base, again, _ = results
    assert base.predictions == again.predictions
    cmp = compare_results(base, again, n_resamples=2000)
    assert {r.key for r in cmp.rows} == {"exact_match", "loss"}
    for row in cmp.rows:
        assert row.diff == 0 and not row.significant and row.verdict == "no significant difference"
        assert row.improved == [] and row.regressed == []
    assert cmp.flipped == []


def test_short_finetune_is_a_significant_improvement(results) -> None:
    base, _, tuned = results
    cmp = compare_results(base, tuned, n_resamples=2000)
    rows = {r.key: r for r in cmp.rows}
    loss = rows["loss"]
    assert loss.diff < 0 and loss.ci_high < 0 and loss.verdict == "better"
    assert len(loss.improved) == len(EXAMPLES)
    em = rows["exact_match"]
    assert em.value_a == 0 and em.value_b > 0.5
    assert em.ci_low > 0 and em.verdict == "better"
    flip = next(f for f in cmp.flipped if f["key"] == "exact_match" and f["direction"] == "improved")
    assert flip["output_b"].strip().lower().rstrip(".") == flip["reference"] and flip["score_b"] == 1.0
    assert json.loads(json.dumps(cmp.to_dict()))["rows"][0]["verdict"] in (
        "better",
        "worse",
        "no significant difference",
    )


def test_result_roundtrip_and_refusals(results, tmp_path) -> None:
    base, _, tuned = results
    base.save(tmp_path / "base.json")
    loaded = EvalResult.load(tmp_path / "base.json")
    assert (
        loaded.predictions == base.predictions
        and loaded.metrics["loss"].per_example == base.metrics["loss"].per_example
    )
    assert loaded.examples == base.examples
    other = EvalResult("x", base.examples[:3], None, {}, {})
    with pytest.raises(TunelabError, match="examples"):
        compare_results(base, other)
    hot = EvalResult("hot", tuned.examples, tuned.predictions, tuned.metrics, {**tuned.decoding, "temperature": 0.7})
    with pytest.raises(TunelabError, match="decoding differs"):
        compare_results(base, hot)
    with pytest.raises(DataError, match="not a tunelab eval result"):
        (tmp_path / "bad.json").write_text("{}")
        EvalResult.load(tmp_path / "bad.json")


def test_clearly_different_scores_exclude_zero() -> None:
    ex = [EvalExample("p", "r")] * 40
    a = EvalResult("a", ex, None, {"m": MetricResult("m", {}, {"s": [0.0, 1.0] * 20})})
    b = EvalResult("b", ex, None, {"m": MetricResult("m", {}, {"s": [1.0, 1.0] * 20})})
    row = compare_results(a, b, n_resamples=2000).rows[0]
    assert row.diff == 0.5 and row.ci_low > 0 and row.significant
    assert row.improved == list(range(0, 40, 2))


def test_load_examples_and_bad_options(tmp_path) -> None:
    path = tmp_path / "eval.jsonl"
    rows = [{"instruction": "Say hi", "output": "hi"}, {"prompt": "x", "completion": "y"}]
    path.write_text(json.dumps(rows[0]) + "\n")
    exs = load_examples(DatasetConfig(path=str(path)))
    assert exs == [EvalExample([{"role": "user", "content": "Say hi"}], "hi", f"{path}:1", "eval")]
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "just text"}\n')
    # Continued-pretraining text is scored by its loss as a whole: no prompt, the text is the reference.
    assert load_examples(DatasetConfig(path=str(text))) == [EvalExample("", "just text", f"{text}:1", "text")]
    model, tok = build_preset("tiny")
    bad = EvalConfig(metrics=[{"name": "exact_match", "options": {"normalise": "squad"}}])
    with pytest.raises(ConfigError, match="no option 'normalise'"):
        evaluate(model, tok, exs, bad, progress=False)
