"""The OpenAI surface with the real `openai` client: n, echo, list prompts, developer role, models, the error
shape of every refusal, the default max_tokens. Decoding features (logprobs, JSON, tools): test_openai_features.py."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from servers import serving

CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def api(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    with serving(runs["lora"], tmp_path_factory.mktemp("api")) as s:
        yield s


def sse(r: httpx.Response) -> list[dict]:
    lines = [ln[len("data: ") :] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(ln) for ln in lines[:-1]]


def test_n_choices_are_indexed_and_each_is_a_seeded_sample(api) -> None:
    r = api.client.chat.completions.create(model="lora-a", messages=CHAT, n=3, max_tokens=8, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    for j, c in enumerate(r.choices):  # choice j is the request with seed 5 + j
        one = api.client.chat.completions.create(model="lora-a", messages=CHAT, max_tokens=8, seed=5 + j)
        assert c.message.content == one.choices[0].message.content
        assert r.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once, not n times
    assert len({c.message.content for c in r.choices}) > 1


def test_n_streamed_equals_n_whole(api) -> None:
    whole = api.client.chat.completions.create(model="base", messages=CHAT, n=2, max_tokens=10, seed=3)
    stream = api.client.chat.completions.create(model="base", messages=CHAT, n=2, max_tokens=10, seed=3, stream=True)
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}


def test_developer_role_is_the_system_role(api) -> None:
    def ask(role: str) -> str:
        msgs = [{"role": role, "content": "Answer briefly."}, *CHAT]
        r = api.client.chat.completions.create(model="lora-a", messages=msgs, max_tokens=8, temperature=0)
        return r.choices[0].message.content

    assert ask("developer") == ask("system")


def test_list_prompts_with_n_and_echo(api) -> None:
    r = api.client.completions.create(
        model="base", prompt=["Hello", "Bye"], n=2, max_tokens=6, temperature=0, echo=True
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    single = api.client.completions.create(model="base", prompt="Bye", max_tokens=6, temperature=0)
    assert r.choices[2].text == "Bye" + single.choices[0].text
    hello = api.client.completions.create(model="base", prompt="Hello", max_tokens=6, temperature=0)
    assert r.choices[0].text == r.choices[1].text == "Hello" + hello.choices[0].text  # greedy: n equal choices
    assert r.usage.prompt_tokens == hello.usage.prompt_tokens + single.usage.prompt_tokens  # once per prompt


def test_completions_stream_chunks_and_usage_are_text_completion_objects(api) -> None:
    body = {"model": "base", "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse(httpx.post(api.url + "/v1/completions", json={**body, "prompt": "Hi"}, headers=api.auth))
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 5
    chat = sse(httpx.post(api.url + "/v1/chat/completions", json={**body, "messages": CHAT}, headers=api.auth))
    assert {c["object"] for c in chat} == {"chat.completion.chunk"} and chat[-1]["usage"]["total_tokens"] > 0


def test_models_by_id(api) -> None:
    m = api.client.models.retrieve("lora-a")
    assert (m.id, m.owned_by) == ("lora-a", "tunelab")
    with pytest.raises(openai.NotFoundError) as e:
        api.client.models.retrieve("nope")
    assert e.value.body["code"] == "model_not_found"


def test_request_without_max_tokens_uses_the_configured_limit(api) -> None:
    r = api.client.chat.completions.create(model="base", messages=CHAT, temperature=0)  # limit 64 < default 128
    assert r.usage.completion_tokens <= 64
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 64


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("POST", "/v1/chat/completions", b'{"model": "base", "messages": [', 400, "invalid JSON"),
        ("POST", "/v1/chat/completions", {"model": "base", "messages": CHAT, "temperature": 5}, 400, "temperature"),
        ("POST", "/v1/chat/completions", {"model": "zzz", "messages": CHAT}, 404, "model 'zzz' not found"),
        ("POST", "/v1/chat/completions", {"model": "base", "messages": CHAT, "seed": 2**64}, 400, "seed"),
        ("POST", "/v1/completions", {"model": "base", "prompt": "a", "logit_bias": {"x": 1}}, 400, "logit_bias"),
        ("POST", "/v1/completions", {"model": "base", "prompt": "a", "logit_bias": {"99999": 1}}, 400, "logit_bias"),
        ("POST", "/v1/chat/completions", {"model": "base", "messages": CHAT, "temperature": 1e-45}, 400, "temperature"),
        ("POST", "/v1/completions", {"model": "base", "prompt": "a", "suffix": "b"}, 400, "suffix"),
        ("POST", "/v1/chat/completions", {"model": "base", "messages": CHAT, "tool_choice": "auto"}, 400, "tools"),
        ("GET", "/v1/nothing-here", None, 404, "/v1/nothing-here"),
        ("GET", "/v1/chat/completions", None, 405, "GET /v1/chat/completions"),
    ],
)
def test_every_error_has_the_openai_shape(api, method, path, body, status, needle) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.request(method, api.url + path, headers={**api.auth, "content-type": "application/json"}, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code", "param"} and needle in err["message"]


def test_auth_errors_have_the_openai_shape(api) -> None:
    r = httpx.post(api.url + "/v1/chat/completions", json={"model": "base", "messages": CHAT})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_lone_surrogates_are_400_naming_the_field(api) -> None:
    raw = b'{"model": "base", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    r = httpx.post(
        api.url + "/v1/chat/completions", content=raw, headers={**api.auth, "content-type": "application/json"}
    )
    assert r.status_code == 400 and "messages.0.content: text with a lone surrogate" in r.json()["error"]["message"]


def test_user_stop_and_tool_messages_are_accepted(api) -> None:
    msgs = [
        *CHAT,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    r = api.client.chat.completions.create(model="base", messages=msgs, max_tokens=4, user="u-1", stop=["\n\n"])
    assert r.choices[0].finish_reason in ("length", "stop")
