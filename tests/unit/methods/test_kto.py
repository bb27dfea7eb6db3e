"""KTO: the loss against a hand computation (KL estimate from mismatched pairs, clamped, weights),
the live reference, trainable parameters, and a short run that separates good from bad rewards."""

from __future__ import annotations

import math

import pytest
import torch
from tests.unit.methods.prefkit import WORDS, run_steps

from tunelab.config import MethodConfig, RunConfig, TuningConfig
from tunelab.data.preference import encode_unpaired
from tunelab.data.records import Message, UnpairedPreference
from tunelab.data.tokenize import Encoder
from tunelab.methods import build_method, default_method
from tunelab.methods.kto import kto_losses
from tunelab.models.presets import build_preset
from tunelab.models.tuning import apply_tuning


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_by_hand() -> None:
    r = [0.8, -0.4, 1.5]  # policy - reference log-ratios of three completions
    kl = [0.3, 0.5, -0.2]  # the same on mismatched pairs
    good = [True, False, False]
    beta, wd, wu = 0.5, 1.0, 1.33
    losses, z = kto_losses(torch.tensor(r), torch.tensor(kl), torch.tensor(good), beta, wd, wu)
    z_hand = max(0.0, sum(kl) / 3)  # 0.2
    want = [
        wd * (1 - sig(beta * (r[0] - z_hand))),
        wu * (1 - sig(beta * (z_hand - r[1]))),
        wu * (1 - sig(beta * (z_hand - r[2]))),
    ]
    assert float(z) == pytest.approx(z_hand)
    assert losses.tolist() == pytest.approx(want, rel=1e-6)
    _, z_neg = kto_losses(torch.tensor(r), torch.tensor([-1.0, -2.0, 0.5]), torch.tensor(good), beta)
    assert float(z_neg) == 0.0  # clamped at 0


def items(tok, n: int = 16):
    """'Say WORD': the word itself is desirable, the word reversed undesirable (alternating)."""
    enc = Encoder(tok, tok.chat_template)
    out = []
    for i, w in enumerate(WORDS[:n]):
        good = i % 2 == 0
        reply = w if good else w[::-1]
        out.append(
            encode_unpaired(
                enc, UnpairedPreference((Message("user", f"Say {w}"),), (Message("assistant", reply),), good)
            )
        )
    return out


def mean_rewards(model, method, its, pad_id: int) -> tuple[float, float, float]:
    model.eval()
    with torch.no_grad():
        out = method.loss(model, method.collate(its, pad_id))
    m = out.metrics
    good = float(m["rewards/desirable"] / m["n/desirable"])
    bad = float(m["rewards/undesirable"] / m["n/undesirable"])
    return float(out.loss_sum) / len(its), good, bad


def test_starts_at_half_and_training_separates_rewards() -> None:
    model, tok = build_preset("tiny", seed=6)
    model = apply_tuning(model, TuningConfig(mode="lora", lora={"r": 16, "alpha": 32}))
    its = items(tok)
    method = build_method(RunConfig(method=MethodConfig(name="kto", kto={"beta": 0.5})), model)
    loss0, g0, b0 = mean_rewards(model, method, its, tok.pad_token_id)
    assert (loss0, g0, b0) == pytest.approx((0.5, 0.0, 0.0), abs=1e-6)  # policy == reference: 1 - sigma(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    run_steps(model, method, its, tok.pad_token_id, steps=8, lr=1e-2)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    loss1, g1, b1 = mean_rewards(model, method, its, tok.pad_token_id)
    assert loss1 < loss0 and g1 > 0 > b1


def test_full_tuning_uses_frozen_copy() -> None:
    model, tok = build_preset("tiny", seed=6)
    method = build_method(RunConfig(tuning=TuningConfig(mode="full"), method=MethodConfig(name="kto")), model)
    loss0 = mean_rewards(model, method, items(tok, 4), tok.pad_token_id)[0]
    assert loss0 == pytest.approx(0.5, abs=1e-6)
    assert default_method("kto").count(items(tok, 1)[0]) == 1


def _kl_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from tunelab.methods.kto import batch_kl

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    local = torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([6.0, 7.0, 9.0])
    torch.save(batch_kl(local), f"{out}.{rank}")
    dist.destroy_process_group()


def test_kl_estimate_pools_all_processes(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_kl_worker, args=(port, str(tmp_path / "z")), nprocs=2)
    z = [torch.load(tmp_path / f"z.{r}") for r in (0, 1)]
    assert z[0].item() == z[1].item() == pytest.approx(25 / 5)  # mean over both processes' 5 mismatched pairs
