"""Reward model: Bradley-Terry loss equals a hand computation on the model's own scores, the head and
body train, and pairwise accuracy on a toy task rises from chance to above 0.9."""

from __future__ import annotations

import math

import pytest
import torch
from tests.unit.methods.prefkit import mean_metrics, run_steps, toy_pairs

from tunelab.methods import default_method
from tunelab.methods.reward import reward_model_from
from tunelab.models.presets import build_preset

RM = default_method("reward")


@pytest.fixture
def rm():
    causal, tok = build_preset("tiny", seed=7)
    return reward_model_from(causal, tok.pad_token_id), tok, causal


def test_body_copied_and_head_scalar(rm) -> None:
    model, tok, causal = rm
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(dict(model.named_parameters())[name], dict(causal.named_parameters())[name])
    batch = RM.collate(toy_pairs(tok, 3), tok.pad_token_id)
    assert model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.shape == (6, 1)


def test_bradley_terry_by_hand(rm) -> None:
    model, tok, _ = rm
    model.eval()
    items = toy_pairs(tok, 3)
    batch = RM.collate(items, tok.pad_token_id)
    with torch.no_grad():
        out = RM.loss(model, batch)
        scores = []
        for ex in [p.chosen for p in items] + [p.rejected for p in items]:  # each sequence alone, no padding
            scores.append(float(model(input_ids=torch.tensor([ex.input_ids])).logits[0, 0]))
    want = sum(-math.log(1 / (1 + math.exp(-(scores[i] - scores[i + 3])))) for i in range(3))
    assert float(out.loss_sum) == pytest.approx(want, rel=1e-4)
    assert float(out.metrics["rewards/accuracy"]) == sum(scores[i] > scores[i + 3] for i in range(3))


def test_accuracy_rises_on_toy_task(rm) -> None:
    model, tok, _ = rm
    items = toy_pairs(tok, 16)
    start = mean_metrics(model, RM, items, tok.pad_token_id)
    head = model.score.weight.detach().clone()
    run_steps(model, RM, items, tok.pad_token_id, steps=30, lr=2e-3)
    end = mean_metrics(model, RM, items, tok.pad_token_id)
    assert not torch.equal(head, model.score.weight)
    assert start["rewards/accuracy"] < 0.8 and end["rewards/accuracy"] > 0.9, (start, end)
    assert end["loss"] < start["loss"]
