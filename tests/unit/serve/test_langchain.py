"""LangChain's `ChatOpenAI` and `OpenAI` (langchain-openai, a test-only dependency) against the server."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from servers import serving

lc = pytest.importorskip(
    "langchain_openai", reason="langchain-openai is a test-only dependency (pip install -e .[dev])"
)


@pytest.fixture(scope="module")
def api(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    with serving(runs["lora"], tmp_path_factory.mktemp("lc"), limits={"max_tokens": 256}) as s:
        yield s


def chat_model(api, **kw) -> lc.ChatOpenAI:
    kw = {"max_tokens": 8, "temperature": 0, **kw}
    return lc.ChatOpenAI(model="lora-a", base_url=api.url + "/v1", api_key=api.key, max_retries=0, **kw)


def test_chat_invoke_and_stream_agree(api) -> None:
    llm = chat_model(api)
    whole = llm.invoke("Say something.")
    streamed = "".join(str(c.content) for c in llm.stream("Say something."))
    assert whole.content and streamed == whole.content
    assert whole.usage_metadata["output_tokens"] == 8 or whole.response_metadata["finish_reason"] == "stop"


def test_chat_n_2(api) -> None:
    from langchain_core.messages import HumanMessage

    result = chat_model(api, n=2, temperature=1.0, seed=1).generate([[HumanMessage("Say something.")]])
    assert len(result.generations[0]) == 2


def test_completions_llm_sends_zero_penalties_and_is_answered(api) -> None:
    llm = lc.OpenAI(model="base", base_url=api.url + "/v1", api_key=api.key, max_tokens=6, temperature=0, max_retries=0)
    assert llm.frequency_penalty == 0 and llm.presence_penalty == 0  # what it sends on every call
    direct = api.client.completions.create(model="base", prompt="Hello", max_tokens=6, temperature=0)
    assert llm.invoke("Hello") == direct.choices[0].text
    assert len(llm.batch(["Hello", "Bye"])) == 2  # a list prompt under the hood


class Person(BaseModel):
    """A person."""

    model_config = ConfigDict(extra="forbid")  # a bounded schema: the random tiny model's output ends in time
    name: str = Field(max_length=6)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user"]


class Add(BaseModel):
    """Add two integers."""

    a: int = Field(ge=0, le=99)
    b: int = Field(ge=0, le=99)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output(api, method: str) -> None:
    person = chat_model(api, max_tokens=250).with_structured_output(Person, method=method).invoke("Alice is 30.")
    assert isinstance(person, Person)


def test_bind_tools(api) -> None:
    for choice in ["Add", "any"]:
        bound = chat_model(api, max_tokens=250).bind_tools(
            [Add], tool_choice=choice, strict=True, parallel_tool_calls=False
        )
        msg = bound.invoke("What is 2 + 3?")
        assert [c["name"] for c in msg.tool_calls] == ["Add"], msg
        Add.model_validate(msg.tool_calls[0]["args"])
    streamed = None
    for part in chat_model(api, max_tokens=250).bind_tools([Add], tool_choice="Add", strict=True).stream("2 + 3?"):
        streamed = part if streamed is None else streamed + part
    assert streamed is not None and [c["name"] for c in streamed.tool_calls] == ["Add"]


def test_logprobs_reach_the_message(api) -> None:
    msg = chat_model(api, logprobs=True, top_logprobs=2).invoke("Say something.")
    content = msg.response_metadata["logprobs"]["content"]
    assert len(content) == msg.usage_metadata["output_tokens"]
    assert all(t["logprob"] <= 0 and len(t["top_logprobs"]) == 2 for t in content)
    assert all(t["top_logprobs"][0]["logprob"] >= t["top_logprobs"][1]["logprob"] for t in content)


def test_json_mode(api) -> None:
    parsed = chat_model(api, max_tokens=250).with_structured_output(method="json_mode").invoke("Reply in JSON.")
    assert isinstance(parsed, dict)  # json_object output, parsed by LangChain
