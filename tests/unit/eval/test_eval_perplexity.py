"""Answer loss against a hand computation; the forgetting probe flags a damaged model, not an unchanged one."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tunelab.errors import DataError
from tunelab.eval.perplexity import answer_loss, forgetting_check, load_probe_texts, text_loss
from tunelab.models.generate import encode_prompt
from tunelab.models.presets import build_preset

PROMPTS = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "2+2?"}], "Continue: once"]
ANSWERS = ["Blue.", "It is four, of course.", " upon a time"]


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny", seed=0)


def _hand_nll(model, ids: list[int], first: int) -> float:
    """Mean -log p(token | prefix) over positions first..end, one unpadded sequence at a time."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return -sum(logp[t - 1, ids[t]].item() for t in range(first, len(ids))) / (len(ids) - first)


def test_answer_loss_counts_only_answer_tokens(tiny) -> None:
    model, tok = tiny
    r = answer_loss(model, tok, PROMPTS, ANSWERS, batch_size=3, progress=False)
    for prompt, answer, loss, n in zip(PROMPTS, ANSWERS, r.per_example, r.tokens):
        p = encode_prompt(tok, prompt)
        a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert n == len(a)
        assert loss == pytest.approx(_hand_nll(model, p + a, len(p)), rel=1e-4)
    total = sum(x * n for x, n in zip(r.per_example, r.tokens)) / sum(r.tokens)
    assert r.loss == pytest.approx(total) and r.perplexity == pytest.approx(math.exp(total))
    one_by_one = [answer_loss(model, tok, [p], [a], progress=False).per_example[0] for p, a in zip(PROMPTS, ANSWERS)]
    assert r.per_example == pytest.approx(one_by_one, rel=1e-4)  # right padding does not change the loss
    m = r.metric()
    assert m.scores["perplexity"] == r.perplexity and m.per_example["loss"] == r.per_example


def test_truncation_keeps_the_answer(tiny) -> None:
    model, tok = tiny
    long_prompt = [{"role": "user", "content": "x" * 100}]
    r = answer_loss(model, tok, [long_prompt], ["abc"], max_length=20, progress=False)
    assert r.truncated == 1 and r.tokens == [4]
    short = answer_loss(model, tok, [[{"role": "user", "content": "hi"}]], ["abc"], max_length=200, progress=False)
    assert short.truncated == 0


def test_text_loss_and_probe_set(tiny) -> None:
    model, tok = tiny
    texts = load_probe_texts()
    assert len(texts) >= 40 and len(set(texts)) == len(texts)
    r = text_loss(model, tok, texts[:4], progress=False)
    assert r.tokens == [len(tok(t)["input_ids"]) - 1 for t in texts[:4]]
    assert r.per_example[0] == pytest.approx(_hand_nll(model, tok(texts[0])["input_ids"], 1), rel=1e-4)
    # an untrained byte model is near-uniform over its 260 tokens
    assert 100 < r.perplexity < 600


def test_forgetting_flags_a_damaged_model_only(tiny) -> None:
    model, tok = tiny
    texts = load_probe_texts()[:6]
    before = text_loss(model, tok, texts, progress=False)
    same = forgetting_check(before, text_loss(model, tok, texts, progress=False), threshold=0.05)
    assert same.relative_change == pytest.approx(0.0, abs=1e-6) and not same.regressed
    damaged = copy.deepcopy(model)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(0)) * 0.5)
    after = text_loss(damaged, tok, texts, progress=False)
    flagged = forgetting_check(before, after, threshold=0.05)
    assert flagged.after > flagged.before and flagged.regressed and flagged.n_texts == 6
    assert not forgetting_check(before, after, threshold=flagged.relative_change + 0.01).regressed


def test_probe_file_errors(tmp_path) -> None:
    bad = tmp_path / "probe.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"txt": "oops"}\n')
    with pytest.raises(DataError, match=r"probe.jsonl, line 3, field \"text\""):
        load_probe_texts(bad)
    with pytest.raises(DataError, match="cannot read"):
        load_probe_texts(tmp_path / "missing.jsonl")
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert load_probe_texts(good) == ["a", "b"]
