"""NER: the token-classification loss equals a hand computation over each word's first token; a tiny
model overfits a handful of synthetic sentences (word accuracy and entity F1 go up)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tests.unit.methods.prefkit import mean_metrics, run_steps

from tunelab.config import ModelConfig
from tunelab.data.formats import FORMATS
from tunelab.data.heads import encode_record, label_names
from tunelab.data.tokenize import IGNORE
from tunelab.methods import default_method
from tunelab.models.heads import load_head_model
from tunelab.models.presets import byte_tokenizer
from tunelab.quickstart import EXAMPLES

NER = default_method("ner")


def sentences(n: int) -> list:
    rows = [json.loads(line) for line in (EXAMPLES / "data" / "tiny_ner.jsonl").read_text().splitlines()[:n]]
    return [FORMATS["token_tags"](r) for r in rows]  # the shipped synthetic set (scripts/make_tiny_ner.py)


@pytest.fixture
def setup():
    recs = sentences(8)
    labels = label_names(recs)
    tok = byte_tokenizer()
    items = [encode_record(tok, r, {n: i for i, n in enumerate(labels)}, 128)[0] for r in recs]
    torch.manual_seed(0)
    model = load_head_model(ModelConfig(name_or_path="tiny", seed=1), "token", labels, tok.pad_token_id)
    return model, tok, items, labels


def test_loss_by_hand(setup) -> None:
    model, tok, items, labels = setup
    model.eval()
    items = items[:3]
    with torch.no_grad():
        out = NER.loss(model, NER.collate(items, tok.pad_token_id))
        want, correct, words = 0.0, 0, 0
        for it in items:  # one sentence at a time, no padding
            logits = model(input_ids=torch.tensor([it.input_ids])).logits[0].tolist()
            for pos, lab in enumerate(it.labels):
                if lab == IGNORE:
                    continue
                row = logits[pos]
                want -= row[lab] - math.log(sum(math.exp(x) for x in row))
                correct += max(range(len(labels)), key=lambda k: row[k]) == lab
                words += 1
    assert words == sum(len(it.words) for it in items) == sum(NER.count(it) for it in items)
    assert float(out.loss_sum) == pytest.approx(want, rel=1e-4)
    assert float(out.metrics["correct"]) == correct


def test_overfits_a_handful(setup) -> None:
    from tunelab.eval.heads import _ner

    model, tok, items, labels = setup
    start = mean_metrics(model, NER, items, tok.pad_token_id)
    f1_start = _ner(model, items, labels, tok.pad_token_id, 8, "base").metrics["ner"].scores["f1"]
    head = model.score.weight.detach().clone()
    run_steps(model, NER, items, tok.pad_token_id, steps=60, lr=3e-3)
    end = mean_metrics(model, NER, items, tok.pad_token_id)
    f1_end = _ner(model, items, labels, tok.pad_token_id, 8, "trained").metrics["ner"].scores["f1"]
    assert not torch.equal(head, model.score.weight)
    assert end["loss"] < 0.2 * start["loss"] and end["correct"] > 0.95, (start, end)
    assert f1_start < 0.2 and f1_end > 0.9, (f1_start, f1_end)
