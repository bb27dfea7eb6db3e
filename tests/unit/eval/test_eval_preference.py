"""Held-out preference accuracy and margins (eval.preference) from the same log-probs training uses, and eval
prompts that follow data.truncation."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import REPO

from tunelab.config import EvalConfig, RunConfig
from tunelab.data.preference import collate_pairs, encode_pair
from tunelab.data.records import Message, Preference
from tunelab.data.tokenize import Encoder, chat_template_for
from tunelab.eval.preference import evaluate_pairs, reply_logps, rewards
from tunelab.eval.runner import EvalExample, evaluate
from tunelab.methods.logps import sequence_logps
from tunelab.models.generate import encode_prompt, keep_end
from tunelab.models.presets import build_preset

PAIRS = [
    Preference((Message("user", "Reverse 'abc'."),), (Message("assistant", "cba"),), (Message("assistant", "abc"),)),
    Preference((Message("user", "Say hi."),), (Message("assistant", "Hi there!"),), (Message("assistant", "No."),)),
    Preference((Message("user", "2+2?"),), (Message("assistant", "4"),), (Message("assistant", "It is five."),)),
]


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny", seed=0)


def items(tok):
    enc = Encoder(tok, chat_template_for(tok, None))
    return [encode_pair(enc, p) for p in PAIRS]


def test_reply_logps_are_the_training_log_probs(tiny) -> None:
    model, tok = tiny
    its = items(tok)
    logps, counts = reply_logps(model, its, batch_size=2)
    with torch.no_grad():
        sums, n = sequence_logps(model.eval(), collate_pairs(its, tok.pad_token_id))
    assert logps == pytest.approx(sums.tolist(), rel=1e-4, abs=1e-4) and counts == n.tolist()


def test_implicit_rewards_by_hand(tiny) -> None:
    model, tok = tiny
    its = items(tok)
    ref, counts = reply_logps(model, its, batch_size=4)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.add_(
            0.05 * torch.randn_like(other.lm_head.weight, generator=torch.Generator().manual_seed(0))
        )
    logps, _ = reply_logps(other, its, batch_size=4)
    assert rewards("reference", 0.1, ref, counts, ref) == [0.0] * 6  # the baseline: policy == reference
    assert rewards("reference", 0.1, logps, counts, ref) == pytest.approx([0.1 * (a - b) for a, b in zip(logps, ref)])
    assert rewards("normalized", 2.0, logps, counts, None) == pytest.approx(
        [2.0 * a / n for a, n in zip(logps, counts)]
    )


def test_evaluate_pairs_before_and_after(tiny, tmp_path) -> None:
    model, tok = tiny
    cfg = RunConfig.model_validate({"data": {"train": [{"path": str(REPO / "examples" / "data" / "tiny_pref.jsonl")}],
                                             "eval_ratio": 0.25, "cache_dir": str(tmp_path)}})  # fmt: skip
    base = evaluate_pairs(cfg, model, tok, "reference", 0.1, "base")
    assert base is not None
    m = base.metrics["preference"]
    assert m.scores["preference_accuracy"] == 0.5 and m.scores["reward_margin"] == 0.0 and m.details["pairs"] == 6
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(1.5)
    final = evaluate_pairs(cfg, other, tok, "reference", 0.1, "fine-tuned", reference=base)
    assert final is not None
    f = final.metrics["preference"]
    logps, ref = f.details["logps"], m.details["logps"]
    margins = [0.1 * ((logps[i] - ref[i]) - (logps[i + 6] - ref[i + 6])) for i in range(6)]
    assert f.per_example["reward_margin"] == pytest.approx(margins)
    assert f.scores["preference_accuracy"] == sum(1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in margins) / 6


def test_long_eval_prompts_are_truncated_or_dropped_and_counted(tiny) -> None:
    model, tok = tiny
    long = "word " * 200
    examples = [EvalExample([{"role": "user", "content": "hi"}], "hello", "a:1"),
                EvalExample([{"role": "user", "content": long + "end?"}], "hello", "a:2")]  # fmt: skip
    cfg = EvalConfig(metrics=["exact_match"], max_new_tokens=2, batch_size=2)
    kept = evaluate(model, tok, examples, cfg, max_length=64, progress=False)
    assert kept.prompts == {"max_tokens": 64, "policy": "truncate", "longer": 1, "truncated": 1}
    assert kept.decoding["max_prompt_tokens"] == 64 and len(kept.examples) == 2
    dropped = evaluate(model, tok, examples, cfg, max_length=64, progress=False, truncation="drop")
    assert [ex.source for ex in dropped.examples] == ["a:1"] and dropped.prompts["dropped"] == ["a:2"]
    ids = encode_prompt(tok, examples[1].prompt)
    cut = keep_end(ids, 64, tok)
    assert len(cut) == 64 and cut[0] == ids[0] == tok.bos_token_id and cut[1:] == ids[-63:]
