"""GRPO: group-normalized advantages and the loss against hand computations, reward functions from the
built-in registry or a file (runpy), and a short run on the parity toy task that raises the mean reward."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch

from tunelab.data.collate import collate
from tunelab.data.tokenize import Example
from tunelab.errors import TunelabError
from tunelab.methods.grpo import REWARDS, GRPOSettings, advantages, grpo_loss, load_reward, train_grpo
from tunelab.methods.logps import frozen_copy
from tunelab.models.presets import build_preset


def test_advantages_by_hand() -> None:
    r = [[1.0, 0.0, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]]
    got = advantages(torch.tensor(r))
    for g, row in enumerate(r):
        mean, std = statistics.mean(row), statistics.stdev(row)  # torch.std is the sample std, like stdev
        assert got[g].tolist() == pytest.approx([(x - mean) / (std + 1e-4) for x in row], abs=1e-6)


def test_loss_by_hand_and_zero_kl_against_identical_reference() -> None:
    model, _ = build_preset("tiny", seed=9)
    model.eval()
    exs = [Example([1, 5, 6, 7, 8], [-100, -100, 6, 7, 8]), Example([1, 9, 10], [-100, -100, 10])]
    batch = collate(exs, 0)
    adv = torch.tensor([0.7, -1.3])
    with torch.no_grad():
        loss, kl = grpo_loss(model, batch, adv, beta=0.5, ref=frozen_copy(model))
        logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    want = 0.0
    for i, ex in enumerate(exs):  # per completion: mean over its labelled tokens of -A * log p
        toks = [float(logp[i, t - 1, ex.labels[t]]) for t in range(1, len(ex.labels)) if ex.labels[t] != -100]
        want += -float(adv[i]) * sum(toks) / len(toks)
    assert float(loss) == pytest.approx(want / 2, rel=1e-5)
    assert float(kl) == pytest.approx(0.0, abs=1e-7)


def test_reward_registry_and_file(tmp_path: Path) -> None:
    assert REWARDS["parity"]("give an even number", "24 7") == pytest.approx(2 / 3)
    f = tmp_path / "my_reward.py"
    f.write_text("def reward(prompt, completion):\n    return float(len(completion))\n")
    assert load_reward(str(f))("p", "abc") == 3.0
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(TunelabError, match="must define a function reward"):
        load_reward(str(tmp_path / "bad.py"))
    with pytest.raises(TunelabError, match="parity"):
        load_reward("my_module.reward")  # dotted names are never imported


@pytest.mark.slow  # ~35 s on a free 2-core CPU, 90 s on a loaded one: -m slow
def test_parity_toy_task_mean_reward_rises() -> None:
    torch.manual_seed(0)
    model, tok = build_preset("tiny", seed=8)
    ref = frozen_copy(model)
    s = GRPOSettings(group_size=16, max_new_tokens=4, lr=3e-3, beta=0.01)
    hist = train_grpo(model, tok, ["Give an even number", "Give an odd number"], REWARDS["parity"], 30, s, ref)
    first = statistics.mean(h["reward"] for h in hist[:5])
    last = statistics.mean(h["reward"] for h in hist[-5:])
    assert last > max(3 * first, 0.15), [round(h["reward"], 3) for h in hist]
    assert hist[-1]["kl"] > 0  # the policy moved away from the reference
