"""The continuous-batching engine on a real tiny model: isolation, join/leave equivalence, OpenAI decoding features."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from tunelab.errors import TunelabError
from tunelab.models.presets import build_preset
from tunelab.serve.batcher import Request
from tunelab.serve.config import ServeConfig
from tunelab.serve.core import Job
from tunelab.serve.decode import Row
from tunelab.serve.engine import (
    Chunk,
    HFEngine,
    SamplingError,
    SamplingParams,
    response_format_constraint,
    tool_choice_constraint,
    tool_names,
)
from tunelab.serve.runtime import build_engine

PROMPTS = ["a", "a much longer prompt here", "xyz", "hello there, model", "q", "one two three four five six"]


@pytest.fixture(scope="module")
def engine():
    model, tok = build_preset("tiny")
    eng = HFEngine(model, tok, max_batch_size=16, wait_ms=50)
    yield eng
    eng.batcher.close()


def ids(eng: HFEngine, text: str) -> list[int]:
    return eng.encode_text(text)


def test_one_unsamplable_request_fails_alone_among_eight_good_ones(engine) -> None:
    good = [SamplingParams(0.8, max_tokens=12, seed=i) for i in range(8)]

    async def alone() -> list[str]:
        return [(await engine.generate("base", ids(engine, PROMPTS[i % 6]), p)).text for i, p in enumerate(good)]

    async def together(bad: SamplingParams, skip_validation: bool) -> list:
        loop = asyncio.get_running_loop()
        calls = [engine.generate("base", ids(engine, PROMPTS[i % 6]), p) for i, p in enumerate(good)]
        if skip_validation:  # defense in depth: a bad row that got past validate() fails inside the decode loop
            fut = loop.create_future()
            job = Job(None, "base", ids(engine, "x"), bad, lambda r: loop.call_soon_threadsafe(_settle, fut, r),
                      lambda i: Row(ids(engine, "x"), bad, index=i))  # fmt: skip
            engine.batcher.submit(Request("mallory", 1, 1, job))
            calls.insert(3, fut)
        else:
            calls.insert(3, engine.generate("base", ids(engine, "x"), bad, tenant="mallory"))
        return await asyncio.gather(*calls, return_exceptions=True)

    expected = asyncio.run(alone())
    for bad, skip in [
        (SamplingParams(1e-45, max_tokens=12), False),
        (SamplingParams(1.0, max_tokens=12, seed=2**64), False),
        (SamplingParams(1e-45, max_tokens=12), True),
    ]:
        before = len(engine.batch_sizes)
        out = asyncio.run(together(bad, skip))
        assert isinstance(out[3], SamplingError), out[3]
        assert ("temperature" in str(out[3])) or ("seed" in str(out[3]))
        results = out[:3] + out[4:]
        assert [r.text for r in results] == expected
        assert max(engine.batch_sizes[before:]) == 8  # the good ones shared one batch


def _settle(fut, r) -> None:
    if not fut.done():
        fut.set_exception(r) if isinstance(r, BaseException) else fut.set_result(r)


def test_continuous_batching_gives_the_same_greedy_outputs_as_one_at_a_time(engine) -> None:
    lengths = [24, 6, 15, 30, 3, 11]

    async def solo() -> list[list[int]]:
        return [
            list((await engine.generate("base", ids(engine, p), SamplingParams(0, max_tokens=n))).choices[0].token_ids)
            for p, n in zip(PROMPTS, lengths)
        ]

    async def staggered() -> tuple[list[list[int]], list[int]]:
        started: list[asyncio.Task] = []
        seen = asyncio.Event()
        # each request joins while the previous ones are mid-decode: it starts after a chunk of the one before
        for p, n in zip(PROMPTS, lengths):
            seen.clear()
            task = asyncio.ensure_future(
                engine.generate("base", ids(engine, p), SamplingParams(0, max_tokens=n), on_chunk=lambda c: seen.set())
            )
            started.append(task)
            await asyncio.wait([task, asyncio.ensure_future(seen.wait())], return_when=asyncio.FIRST_COMPLETED)
        results = await asyncio.gather(*started)
        return [list(r.choices[0].token_ids) for r in results], list(engine.batch_sizes)

    expected = asyncio.run(solo())
    before = len(engine.batch_sizes)
    got, sizes = asyncio.run(staggered())
    assert got == expected
    sizes = sizes[before:]
    assert len(set(sizes)) > 2  # rows joined and left during decoding (batch size changed step to step)
    model, tok = build_preset("tiny")
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids(engine, PROMPTS[3])]), max_new_tokens=30, do_sample=False)
    assert expected[3] == ref[0, len(ids(engine, PROMPTS[3])) :].tolist()


def test_mixed_adapters_share_steps_and_match_solo(runs: dict[str, Path]) -> None:
    eng = build_engine(runs["lora"], ServeConfig(), adapters={"b": str(runs["lora2"])})
    models = ["base", "lora-a", "b", "lora-a", "base", "b"]

    async def go(concurrent: bool) -> list[str]:
        calls = [eng.generate(m, ids(eng, p), SamplingParams(0, max_tokens=10)) for m, p in zip(models, PROMPTS)]
        if concurrent:
            return [r.text for r in await asyncio.gather(*calls)]
        return [(await c).text for c in calls]

    try:
        solo = asyncio.run(go(False))
        assert asyncio.run(go(True)) == solo
        assert max(eng.batch_sizes) == 6 and len(set(solo)) > 2
    finally:
        eng.batcher.close()


def test_n_choices_are_distinct_reproducible_and_counted(engine) -> None:
    p = SamplingParams(1.0, max_tokens=10, n=3, seed=5)
    a = asyncio.run(engine.generate("base", ids(engine, "hi"), p))
    b = asyncio.run(engine.generate("base", ids(engine, "hi"), p))
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) == 3
    assert a.completion_tokens == sum(len(c.token_ids) for c in a.choices)
    assert a.text == a.choices[0].text
    one = asyncio.run(engine.generate("base", ids(engine, "hi"), SamplingParams(1.0, max_tokens=10, seed=6)))
    assert one.text == a.choices[1].text  # choice i draws with seed + i


def test_logprobs_match_a_direct_forward(engine) -> None:
    prompt = ids(engine, "hello")
    p = SamplingParams(0, max_tokens=4, logprobs=True, top_logprobs=3, prompt_logprobs=True)
    r = asyncio.run(engine.generate("base", prompt, p))
    seq = torch.tensor([prompt + list(r.choices[0].token_ids)])
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(seq).logits[0].float(), -1)
    gen = r.choices[0].logprobs
    assert gen is not None and len(gen) == 4
    for k, entry in enumerate(gen):
        pos = len(prompt) - 1 + k
        assert entry.token_id == int(lp[pos].argmax())  # greedy took the most likely token
        assert abs(entry.logprob - float(lp[pos, entry.token_id])) < 1e-4
        assert [t.token_id for t in entry.top] == lp[pos].topk(3).indices.tolist()
    assert r.prompt_logprobs is not None and r.prompt_logprobs[0].logprob is None
    assert r.prompt_logprobs[0].token_id == prompt[0]
    for pos, entry in enumerate(r.prompt_logprobs[1:]):
        assert entry.token_id == prompt[pos + 1] and abs(entry.logprob - float(lp[pos, prompt[pos + 1]])) < 1e-4


def test_frequency_penalty_stops_repetition(engine) -> None:
    prompt = ids(engine, "aaaa")
    plain = asyncio.run(engine.generate("base", prompt, SamplingParams(0, max_tokens=40)))
    pen = asyncio.run(engine.generate("base", prompt, SamplingParams(0, max_tokens=40, frequency_penalty=2.0,
                                                                     presence_penalty=2.0)))  # fmt: skip
    most = max(plain.choices[0].token_ids.count(t) for t in set(plain.choices[0].token_ids))
    assert most > 2  # the untuned tiny model repeats itself under greedy decoding
    assert len(set(pen.choices[0].token_ids)) > len(set(plain.choices[0].token_ids))


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as OpenAI's strict schemas
    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=150)
    role: Literal["admin", "user"]
    active: bool


def test_json_schema_output_parses_and_validates(engine) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": Person.model_json_schema()}}
    c = response_format_constraint(fmt)
    for seed in range(3):
        r = asyncio.run(engine.generate("base", ids(engine, "who?"), SamplingParams(1.0, max_tokens=200, seed=seed,
                                                                                    constraint=c)))  # fmt: skip
        assert r.finish_reason == "stop", r.text
        Person.model_validate_json(r.text)  # raises if it does not follow the schema
    obj = asyncio.run(engine.generate("base", ids(engine, "{"), SamplingParams(
        1.0, max_tokens=200, seed=1, constraint=response_format_constraint({"type": "json_object"}))))  # fmt: skip
    assert isinstance(json.loads(obj.text), dict)
    bad = response_format_constraint({"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nope"}}})
    assert "nope" in (engine.validate(SamplingParams(constraint=bad)) or "")


def test_forced_tool_call_is_parsed_into_tool_calls(engine) -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"], "additionalProperties": False}}},
        {"type": "function", "function": {"name": "noop"}},
    ]  # fmt: skip
    choice = {"type": "function", "function": {"name": "get_weather"}}
    p = SamplingParams(1.0, max_tokens=120, seed=2, constraint=tool_choice_constraint(tools, choice),
                       tools=tool_names(tools))  # fmt: skip
    chunks: list[Chunk] = []
    r = asyncio.run(engine.generate("base", ids(engine, "weather?"), p, on_chunk=chunks.append))
    assert r.finish_reason == "tool_calls" and r.text == ""
    [call] = r.choices[0].tool_calls
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    assert "".join(c.text for c in chunks) == "" and chunks[-1].tool_calls == r.choices[0].tool_calls


def test_non_streamed_cancellation_stops_decoding(engine) -> None:
    state = {"n": 0}

    def cancelled() -> bool:
        state["n"] += 1
        return state["n"] > 5

    r = asyncio.run(engine.generate("base", ids(engine, "go"), SamplingParams(0, max_tokens=3000),
                                    is_cancelled=cancelled))  # fmt: skip
    assert r.finish_reason == "cancelled" and r.completion_tokens < 10

    async def abandon() -> int:
        task = asyncio.ensure_future(engine.generate("base", ids(engine, "go"), SamplingParams(0, max_tokens=3000)))
        while not engine.core.busy():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()  # what a server does when a non-streamed client disconnects or times out
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(1000):  # the engine goes idle by itself, long before 3000 tokens
            if not engine.core.busy():
                break
            await asyncio.sleep(0.01)
        return len(engine.batch_sizes)

    before = len(engine.batch_sizes)
    after = asyncio.run(abandon())
    assert not engine.core.busy() and after - before < 3000


def test_adapter_unload_drains_running_requests(runs: dict[str, Path]) -> None:
    eng = build_engine(runs["lora"], ServeConfig(), adapters={"b": str(runs["lora2"])})

    async def go():
        task = asyncio.ensure_future(eng.generate("b", ids(eng, "x"), SamplingParams(0, max_tokens=200)))
        while not eng.core.busy():
            await asyncio.sleep(0.01)
        unload = asyncio.ensure_future(eng.unload_adapter("b"))
        await asyncio.sleep(0)
        listed = eng.model_ids()
        with pytest.raises(TunelabError, match="unknown model"):
            await eng.generate("b", ids(eng, "x"), SamplingParams(0, max_tokens=2))
        result = await task
        await unload
        return listed, result

    try:
        listed, result = asyncio.run(go())
        assert "b" not in listed and result.finish_reason == "length" and result.completion_tokens == 200
        assert eng.model_ids() == ["base", "lora-a"]
    finally:
        eng.batcher.close()


def test_failed_adapter_load_leaves_the_name_free(runs: dict[str, Path], tmp_path: Path) -> None:
    eng = build_engine(runs["lora"], ServeConfig())
    broken = tmp_path / "broken"
    broken.mkdir()
    good = runs["lora2"] / "final"
    for f in good.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = (broken / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    try:
        with pytest.raises(TunelabError, match="could not be loaded"):
            asyncio.run(eng.load_adapter("b", broken))
        asyncio.run(eng.load_adapter("b", good))
        r = asyncio.run(eng.generate("b", ids(eng, "x"), SamplingParams(0, max_tokens=4)))
        assert r.completion_tokens == 4
    finally:
        eng.batcher.close()


def test_invalid_unicode_is_a_clear_error(engine) -> None:
    with pytest.raises(TunelabError, match=r"prompt: not valid Unicode"):
        engine.encode_text("hi \ud800")
    model, tok = build_preset("tiny")
    with pytest.raises(TunelabError, match=r"messages\[0\]\.content: not valid Unicode"):
        HFEngine.encode_chat(engine, [{"role": "user", "content": "\udfff"}])
