"""Engine pieces without a model: sampling against hand computations, the fair admission queue, tool-call parsing."""

from __future__ import annotations

import json
import math
from collections import Counter

import torch

from tunelab.serve.batcher import FairQueue, Request
from tunelab.serve.decode import Chunk, Row, SamplingParams, check_params, emit, sample_rows
from tunelab.serve.tools import parse_tool_calls, tool_choice_constraint


def tb(t: int) -> bytes:
    return bytes([65 + t])


LOGITS = torch.tensor([[2.0, 1.0, 0.5, 3.0, -1.0]])


def hand_logprobs(logits: list[float]) -> list[float]:
    z = math.log(sum(math.exp(v) for v in logits))
    return [v - z for v in logits]


def test_penalties_and_bias_follow_openai_formula_in_logprobs() -> None:
    p = SamplingParams(0, presence_penalty=1.0, frequency_penalty=0.4, logprobs=True, top_logprobs=5,
                       logit_bias=((4, 2.5),))  # fmt: skip
    row = Row([1], p)
    row.counts = {3: 2, 0: 1}  # token 3 generated twice, token 0 once
    # by hand: l[t] + bias[t] - count[t] * 0.4 - (count[t] > 0) * 1.0
    expected = [2.0 - 0.4 - 1.0, 1.0, 0.5, 3.0 - 0.8 - 1.0, -1.0 + 2.5]
    [(tok, lp)] = sample_rows([row], LOGITS, tb)
    want = hand_logprobs(expected)
    assert tok == max(range(5), key=lambda i: expected[i]) == 4  # the biased token wins, not the raw argmax 3
    assert math.isclose(lp.logprob, want[tok], abs_tol=1e-5)
    assert {t.token_id: round(t.logprob, 5) for t in lp.top} == {i: round(v, 5) for i, v in enumerate(want)}
    assert [t.token_id for t in lp.top] == sorted(range(5), key=lambda i: -expected[i])
    assert lp.token == "E" and lp.bytes == (69,)
    plain = sample_rows([Row([1], SamplingParams(0))], LOGITS, tb)[0]
    assert plain[0] == 3 and plain[1] is None  # no penalties: the raw argmax; no logprobs unless asked


def test_temperature_changes_the_sampled_distribution_as_computed() -> None:
    draws = Counter()
    gen = torch.Generator().manual_seed(0)
    rows = [Row([1], SamplingParams(0.5, presence_penalty=2.0), gen=gen)]
    rows[0].counts = {3: 1}
    for _ in range(4000):
        [(tok, _)] = sample_rows(rows, LOGITS, tb)
        draws[tok] += 1
    expected = [v / 0.5 for v in [2.0, 1.0, 0.5, 1.0, -1.0]]
    probs = [math.exp(v) for v in hand_logprobs(expected)]
    for t in range(5):  # 4000 draws: about 4 standard errors of slack at p=0.5
        assert abs(draws[t] / 4000 - probs[t]) < 0.035, (t, draws[t] / 4000, probs[t])


def test_unsamplable_row_fails_alone_in_sampling() -> None:
    good = [Row([1], SamplingParams(0.7, seed=i)) for i in range(8)]
    bad = Row([1], SamplingParams(1e-45, seed=1))
    out = sample_rows([*good[:4], bad, *good[4:]], LOGITS.repeat(9, 1), tb)
    assert isinstance(out[4], str) and "temperature" in out[4]
    assert all(isinstance(o, tuple) for i, o in enumerate(out) if i != 4)


def test_check_params_names_the_field() -> None:
    ok = SamplingParams()
    assert check_params(ok, 10, 4) is None
    cases = {
        "temperature": SamplingParams(temperature=1e-45),
        "seed": SamplingParams(seed=2**64),
        "stop[0]": SamplingParams(stop=("\ud800",)),
        "n:": SamplingParams(n=5),
        "logit_bias": SamplingParams(logit_bias=((10, 1.0),)),
        "presence_penalty": SamplingParams(presence_penalty=float("nan")),
        "top_logprobs": SamplingParams(top_logprobs=21),
    }
    for field, p in cases.items():
        msg = check_params(p, 10, 4)
        assert msg is not None and msg.startswith(field), (field, msg)


def test_streamed_text_holds_back_tool_call_markup() -> None:
    chunks: list[Chunk] = []
    row = Row([1], SamplingParams(tools=("get",)), on_chunk=chunks.append)
    for text in ["Sure", "Sure.\n<tool", 'Sure.\n<tool_call>\n{"name": "get", "arguments": {"q": 1}}\n</tool_call>']:
        row.text = text
        emit(row)
    row.finish_reason = "stop"
    emit(row)
    assert "".join(c.text for c in chunks) == "Sure." == row.content
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].tool_calls[0]["function"]["name"] == "get"


def test_tool_call_parsing() -> None:
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    content, calls = parse_tool_calls(text, ("get_weather",))
    assert content == "Let me look." and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    two = '<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>\n<tool_call>{"name": "b", "arguments": {}}'
    content, calls = parse_tool_calls(two, ("a", "b"))  # string arguments; last end tag missing (EOS)
    assert content == "" and [c["function"]["name"] for c in calls] == ["a", "b"]
    for kept in ['<tool_call>{"name": "nope", "arguments": {}}</tool_call>', "<tool_call>{not json</tool_call>"]:
        assert parse_tool_calls(kept, ("a",)) == (kept, [])  # unreadable or unknown: stays content


def test_tool_choice_builds_a_grammar_only_when_forced() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert tool_choice_constraint(tools, "auto") is None and tool_choice_constraint(tools, "none") is None
    forced = tool_choice_constraint(tools, {"type": "function", "function": {"name": "f"}})
    assert forced is not None and forced.kind == "lark" and '"const": "f"' in forced.spec
    assert tool_choice_constraint(tools, "required") is not None


def req(tenant: str, cost: int = 10, slots: int = 1) -> Request:
    return Request(tenant, slots, cost, None)


def test_fair_queue_admits_a_newcomer_past_a_flood() -> None:
    q = FairQueue(max_batch_size=16, extra_slots=2, max_prefill_tokens=10_000)
    for _ in range(32):
        q.push(req("flood", cost=1400))
    first = q.take(Counter())
    assert len(first) == 7  # the prefill budget: 7 x 1400 tokens per step
    q.push(req("alice", cost=20))
    active = Counter(flood=16)  # every normal slot is held by the flood
    got = q.take(active)
    assert [r.tenant for r in got] == ["alice"]  # an extra slot: alice is under her fair share
    assert q.take(Counter(flood=16, alice=1)) == []  # the flood cannot take extra slots


def test_fair_queue_serves_the_least_served_tenant_first() -> None:
    q = FairQueue(max_batch_size=4, extra_slots=0)
    for _ in range(4):
        q.push(req("a"))
        q.push(req("b"))
    got = q.take(Counter())
    assert Counter(r.tenant for r in got) == Counter(a=2, b=2)
    q.charge(Counter(a=100))  # a decoded much more since
    assert [r.tenant for r in q.take(Counter(a=1, b=2))] == ["b"]
