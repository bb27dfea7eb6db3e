"""DPO / IPO / SimPO / ORPO: losses against hand computations on fixed log-probs, the reference model
(adapters off, frozen copy, precomputed), trainable parameters move, and overfitting 16 pairs works."""

from __future__ import annotations

import math

import pytest
import torch
from tests.unit.methods.prefkit import mean_metrics, run_steps, toy_pairs

from tunelab.config import MethodConfig, RunConfig, TuningConfig
from tunelab.methods import build_method, default_method
from tunelab.methods.dpo import dpo_losses
from tunelab.methods.orpo import orpo_losses
from tunelab.methods.simpo import loss as simpo_loss
from tunelab.models.presets import build_preset
from tunelab.models.tuning import apply_tuning

W, L = [-12.0, -7.5], [-10.0, -9.0]  # policy log-probs of chosen / rejected for two pairs
RW, RL = [-11.0, -8.0], [-10.5, -8.5]  # reference log-probs


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def t(x: list[float]) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_dpo_sigmoid_with_label_smoothing_by_hand() -> None:
    beta, eps = 0.1, 0.2
    got = dpo_losses(t(W) - t(RW), t(L) - t(RL), beta, eps)
    for i in range(2):
        h = (W[i] - RW[i]) - (L[i] - RL[i])  # pair 0: -1 - 0.5 = -1.5
        want = -(1 - eps) * math.log(sig(beta * h)) - eps * math.log(sig(-beta * h))
        assert float(got[i]) == pytest.approx(want, rel=1e-12)
    assert float(dpo_losses(t([0.0]), t([0.0]), 0.5)[0]) == pytest.approx(math.log(2))


def test_ipo_by_hand() -> None:
    beta = 0.25
    got = dpo_losses(t(W) - t(RW), t(L) - t(RL), beta, loss_type="ipo")
    h = (-12 + 11) - (-10 + 10.5)
    assert float(got[0]) == pytest.approx((h - 1 / (2 * beta)) ** 2)


def test_robust_dpo_by_hand_and_unbiased_under_flips() -> None:
    beta, eps = 0.1, 0.2
    got = dpo_losses(t(W) - t(RW), t(L) - t(RL), beta, eps, loss_type="robust")
    h = (W[0] - RW[0]) - (L[0] - RL[0])
    want = (-(1 - eps) * math.log(sig(beta * h)) + eps * math.log(sig(-beta * h))) / (1 - 2 * eps)
    assert float(got[0]) == pytest.approx(want, rel=1e-12)
    # Expected over a label flipped with probability eps, the robust loss is the clean sigmoid loss.
    flipped = dpo_losses(t(L) - t(RL), t(W) - t(RW), beta, eps, loss_type="robust")
    clean = dpo_losses(t(W) - t(RW), t(L) - t(RL), beta, 0.0)
    torch.testing.assert_close((1 - eps) * got + eps * flipped, clean)


def test_apo_zero_by_hand() -> None:
    beta = 0.5
    got = dpo_losses(t(W) - t(RW), t(L) - t(RL), beta, loss_type="apo_zero")
    for i in range(2):
        want = (1 - sig(beta * (W[i] - RW[i]))) + sig(beta * (L[i] - RL[i]))
        assert float(got[i]) == pytest.approx(want, rel=1e-12)


def test_orpo_by_hand() -> None:
    beta = 0.1
    aw, al = [-0.5, -1.2], [-0.9, -0.3]  # mean per-token log-probs
    losses, _ = orpo_losses(t(aw), t(al), beta)
    for i in range(2):
        odds_w = math.log(math.exp(aw[i]) / (1 - math.exp(aw[i])))
        odds_l = math.log(math.exp(al[i]) / (1 - math.exp(al[i])))
        want = -aw[i] - beta * math.log(sig(odds_w - odds_l))
        assert float(losses[i]) == pytest.approx(want, rel=1e-10)


class FixedLogps(torch.nn.Module):
    """Not a language model: a stand-in whose sequence log-probs are fixed, for the SimPO formula only."""


def test_simpo_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.methods import simpo

    sums, counts = t([-12.0, -9.0, -10.0, -10.0]), torch.tensor([4, 3, 5, 2])
    monkeypatch.setattr(simpo, "sequence_logps", lambda model, batch: (sums, counts))
    beta, gamma = 2.0, 0.5
    out = simpo_loss(FixedLogps(), {}, beta=beta, gamma=gamma)
    want = [
        -math.log(sig(beta * (-12 / 4) - beta * (-10 / 5) - gamma)),
        -math.log(sig(beta * (-9 / 3) - beta * (-10 / 2) - gamma)),
    ]
    assert float(out.loss_sum) == pytest.approx(sum(want))
    assert float(out.metrics["rewards/accuracy"]) == 1.0  # pair 1: -6 > -10; pair 0: -6 < -4


@pytest.fixture
def lora_model():
    model, tok = build_preset("tiny", seed=3)
    return apply_tuning(model, TuningConfig(mode="lora", lora={"r": 8, "alpha": 16})), tok


def test_dpo_reference_is_base_with_adapters_off(lora_model) -> None:
    model, tok = lora_model
    items = toy_pairs(tok, 4)
    m = mean_metrics(model, default_method("dpo"), items, tok.pad_token_id)
    assert m["loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA B = 0: policy == reference
    assert m["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():  # now the adapter changes the policy but not the reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    assert abs(mean_metrics(model, default_method("dpo"), items, tok.pad_token_id)["rewards/margins"]) > 1e-4


def test_full_tuning_frozen_copy_and_precompute_agree() -> None:
    model, tok = build_preset("tiny", seed=4)
    items = toy_pairs(tok, 4)
    full = RunConfig(tuning=TuningConfig(mode="full"), method=MethodConfig(name="dpo"))
    method = build_method(full, model)
    pre = build_method(
        full.model_copy(update={"method": MethodConfig(name="dpo", dpo={"reference": "precompute"})}),
        model,
        items,
        tok.pad_token_id,
    )
    assert all(it.ref_logps is not None for it in items)
    run_steps(model, method, items, tok.pad_token_id, steps=3, lr=1e-3)
    a = mean_metrics(model, method, items, tok.pad_token_id)
    b = mean_metrics(model, pre, items, tok.pad_token_id)
    assert a["loss"] != pytest.approx(math.log(2), abs=1e-4)  # the policy moved away from the copy
    for k in ("loss", "rewards/chosen", "rewards/rejected"):
        assert a[k] == pytest.approx(b[k], abs=1e-5)


@pytest.mark.parametrize("name", ["dpo", "simpo", "orpo"])
def test_trainable_params_change(lora_model, name: str) -> None:
    model, tok = lora_model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    run_steps(model, default_method(name), toy_pairs(tok, 4), tok.pad_token_id, steps=2, lr=1e-2)
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)


@pytest.mark.parametrize(
    ("name", "beta"), [("dpo", 0.1), ("ipo", 0.5), ("robust", 0.1), ("apo_zero", 0.5), ("simpo", 2.0), ("orpo", 0.5)]
)
def test_overfit_16_pairs_reward_accuracy(name: str, beta: float) -> None:
    model, tok = build_preset("tiny", seed=5)
    model = apply_tuning(model, TuningConfig(mode="lora", lora={"r": 16, "alpha": 32}))
    if name in ("simpo", "orpo"):
        cfg = MethodConfig.model_validate({"name": name, name: {"beta": beta}})
    else:
        loss_type = "sigmoid" if name == "dpo" else name
        smoothing = 0.1 if name == "robust" else 0.0
        cfg = MethodConfig(name="dpo", dpo={"beta": beta, "loss_type": loss_type, "label_smoothing": smoothing})
    method = build_method(RunConfig(method=cfg), model)
    items = toy_pairs(tok, 16)
    start = mean_metrics(model, method, items, tok.pad_token_id)
    run_steps(model, method, items, tok.pad_token_id, steps=8, lr=1e-2)
    end = mean_metrics(model, method, items, tok.pad_token_id)
    assert start["rewards/accuracy"] < 0.7  # the untrained model does not already prefer the chosen replies
    assert end["loss"] < start["loss"]
    assert end["rewards/accuracy"] > 0.9, (start, end)
