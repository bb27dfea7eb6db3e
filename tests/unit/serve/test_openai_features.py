"""The engine's decoding features through HTTP with the real `openai` client: one bad request among good ones,
penalties, logit_bias, logprobs (chat and completions, echo, streamed and not), JSON mode, json_schema
structured output (`chat.completions.parse`) and tool calls (forced, streamed, one call only).

The tiny model is random: what makes its structured output parse is the constrained decoder, and what makes
it end within max_tokens is a bounded schema (short strings, bounded integers, no extra properties)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field
from servers import serving

CHAT = [{"role": "user", "content": "Say something."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}},
                "required": ["a"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "additionalProperties": False}}},
]


@pytest.fixture(scope="module")
def api(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    guard = {"blocklist": ["zzzz"], "blocklist_action": "redact"}  # see test_logprobs_are_withheld_when_redacted
    with serving(runs["lora"], tmp_path_factory.mktemp("features"), limits={"max_tokens": 256}, guard=guard) as s:
        yield s


def sse(r: httpx.Response) -> list[dict]:
    lines = [ln[len("data: ") :] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(ln) for ln in lines[:-1]]


def stream(api, path: str, body: dict) -> list[dict]:
    return sse(httpx.post(api.url + path, json={**body, "stream": True}, headers=api.auth, timeout=60))


# --------------------------------------------------------------------------- isolation


def test_one_unsamplable_request_among_eight_good_ones_gets_400_and_they_succeed(api) -> None:
    engine = api.state.engine
    prompts = [f"Count to {i}." for i in range(8)]

    async def ask(content: str, temperature: float):
        msgs = [{"role": "user", "content": content}]
        async with openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0) as client:
            return await client.chat.completions.create(
                model="lora-a", messages=msgs, max_tokens=12, temperature=temperature
            )

    async def alone() -> list[str]:
        return [(await ask(p, 0)).choices[0].message.content for p in prompts]

    async def together() -> list:
        tasks = [asyncio.ensure_future(ask(p, 0)) for p in prompts]
        tasks.insert(3, asyncio.ensure_future(ask("x", 1e-45)))
        deadline = time.monotonic() + 60  # a bound on the wait, not a measurement
        while len(engine.batcher.pending()) < 8 and not any(t.done() and t.exception() is None for t in tasks):
            assert time.monotonic() < deadline, "the good requests did not reach the engine's queue"
            await asyncio.sleep(0.01)
        gate.set()  # the engine resumes: the queued requests join one batch at its next step
        return await asyncio.gather(*tasks, return_exceptions=True)

    expected = asyncio.run(alone())
    gate = threading.Event()
    before = len(engine.batch_sizes)
    engine.batcher.call(lambda: gate.wait(60))  # hold the engine thread so all 8 are queued together
    out = asyncio.run(together())
    bad = out.pop(3)
    assert isinstance(bad, openai.BadRequestError) and bad.body["param"] == "temperature", bad
    assert "temperature" in bad.body["message"] and bad.status_code == 400
    assert [r.choices[0].message.content for r in out] == expected
    assert max(engine.batch_sizes[before:]) == 8  # the good ones shared each decode step


# --------------------------------------------------------------------------- penalties and bias


def test_penalties_change_the_output(api) -> None:
    def text(**kw) -> str:
        r = api.client.completions.create(model="base", prompt="aaaa", max_tokens=40, temperature=0, **kw)
        return r.choices[0].text

    plain, penalized = text(), text(frequency_penalty=2.0, presence_penalty=2.0)
    assert max(plain.count(c) for c in set(plain)) > 2  # the untuned model repeats itself under greedy decoding
    assert len(set(penalized)) > len(set(plain))


def test_logit_bias_forces_a_token(api) -> None:
    q = api.state.engine.encode_text("q")[-1]
    r = api.client.completions.create(model="base", prompt="Hello", max_tokens=5, temperature=0, logit_bias={q: 100})
    assert r.choices[0].text == "qqqqq"


# --------------------------------------------------------------------------- logprobs


def test_chat_logprobs_whole_and_streamed_agree(api) -> None:
    body = {"model": "base", "messages": CHAT, "max_tokens": 6, "logprobs": True, "top_logprobs": 2, "temperature": 0}
    r = api.client.chat.completions.create(**body)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for t in content:
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token  # greedy took the likeliest
        assert t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token
    chunks = stream(api, "/v1/chat/completions", body)
    streamed = [
        e
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert [e["token"] for e in streamed] == [t.token for t in content]
    assert [e["logprob"] for e in streamed] == pytest.approx([t.logprob for t in content], abs=1e-4)


def test_completion_logprobs_with_echo(api) -> None:
    body = {"model": "base", "prompt": "Hi there", "max_tokens": 5, "logprobs": 2, "echo": True, "temperature": 0}
    r = api.client.completions.create(**body)
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith("Hi there")
    assert len(lp.tokens) == r.usage.prompt_tokens + r.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert all(len(t) == 2 for t in lp.top_logprobs[1:]) and lp.text_offset == sorted(lp.text_offset)
    chunks = stream(api, "/v1/completions", body)
    assert "".join(c["choices"][0]["text"] for c in chunks) == r.choices[0].text
    tokens = [t for c in chunks if c["choices"][0]["logprobs"] for t in c["choices"][0]["logprobs"]["tokens"]]
    assert tokens == lp.tokens


def test_logprobs_are_withheld_when_the_guard_redacted_the_text(api) -> None:
    z = api.state.engine.encode_text("z")[-1]
    body = {"model": "base", "prompt": "Hi", "max_tokens": 4, "logprobs": 1, "temperature": 0, "logit_bias": {z: 100}}
    r = api.client.completions.create(**body)
    assert "zzzz" not in r.choices[0].text and r.choices[0].logprobs is None  # its tokens would spell it out
    chunks = stream(api, "/v1/completions", body)
    assert "zzzz" not in json.dumps(chunks) and not any(c["choices"][0]["logprobs"] for c in chunks)
    plain = api.client.completions.create(**{**body, "logit_bias": {}})
    assert plain.choices[0].logprobs is not None  # the same request with text the guard leaves alone


# --------------------------------------------------------------------------- structured output


class Pet(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as OpenAI's strict schemas
    name: str = Field(max_length=6)
    legs: int = Field(ge=0, le=8)
    kind: Literal["cat", "dog"]


@pytest.mark.parametrize("stream_it", [False, True])
@pytest.mark.parametrize("fmt", ["json_object", "json_schema"])
def test_json_mode(api, fmt: str, stream_it: bool) -> None:
    rf = {"type": "json_object"}
    if fmt == "json_schema":
        rf = {"type": "json_schema", "json_schema": {"name": "pet", "schema": Pet.model_json_schema()}}
    body = {"model": "lora-a", "messages": CHAT, "max_tokens": 200, "response_format": rf, "temperature": 0}
    if stream_it:
        chunks = stream(api, "/v1/chat/completions", body)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        r = api.client.chat.completions.create(**body)
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
    assert finish == "stop", text
    value = json.loads(text)
    assert isinstance(value, dict)
    if fmt == "json_schema":
        Pet.model_validate(value)


def test_openai_parse_gives_the_pydantic_object(api) -> None:
    r = api.client.chat.completions.parse(model="lora-a", messages=CHAT, response_format=Pet, max_tokens=200)
    assert isinstance(r.choices[0].message.parsed, Pet)


def test_invalid_schema_is_400(api) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
    with pytest.raises(openai.BadRequestError, match="nowhere"):
        api.client.chat.completions.create(model="base", messages=CHAT, response_format=rf)


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_forced_tool_call(api, choice) -> None:
    body = dict(model="base", messages=CHAT, max_tokens=250, tools=TOOLS, tool_choice=choice, temperature=0)
    r = api.client.chat.completions.create(**body, parallel_tool_calls=False)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    assert calls[0].type == "function" and calls[0].id.startswith("call_")
    args = json.loads(calls[0].function.arguments)
    assert isinstance(args, dict)
    if isinstance(choice, dict):
        assert calls[0].function.name == "add" and 0 <= args["a"] <= 99
    none = api.client.chat.completions.create(**{**body, "tool_choice": "none", "max_tokens": 4})
    assert none.choices[0].message.tool_calls is None  # "none": answered in text, tools unused


def test_streamed_tool_calls_arrive_in_the_last_chunk(api) -> None:
    choice = {"type": "function", "function": {"name": "add"}}
    body = dict(model="base", messages=CHAT, max_tokens=250, tools=TOOLS, tool_choice=choice, temperature=0)
    whole = api.client.chat.completions.create(**body).choices[0].message.tool_calls
    calls = []
    for chunk in api.client.chat.completions.create(**body, stream=True):
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            if c.finish_reason:
                assert c.finish_reason == "tool_calls"
    assert [(c.index, c.function.name, c.function.arguments) for c in calls] == [
        (0, w.function.name, w.function.arguments) for w in whole
    ]


def test_forced_tool_call_and_response_format_conflict(api) -> None:
    with pytest.raises(openai.BadRequestError, match="response_format"):
        api.client.chat.completions.create(
            model="base", messages=CHAT, tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}
        )
