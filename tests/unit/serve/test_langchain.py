"""LangChain's `ChatOpenAI` and `OpenAI` (langchain-openai, a test-only dependency) against the server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel
from servers import serving

from tunelab.serve.decode import SamplingParams

lc = pytest.importorskip(
    "langchain_openai", reason="langchain-openai is a test-only dependency (pip install -e .[dev])"
)


@pytest.fixture(scope="module")
def api(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    with serving(runs["lora"], tmp_path_factory.mktemp("lc")) as s:
        yield s


def chat_model(api, **kw) -> lc.ChatOpenAI:
    kw = {"max_tokens": 8, "temperature": 0, **kw}
    return lc.ChatOpenAI(model="lora-a", base_url=api.url + "/v1", api_key=api.key, max_retries=0, **kw)


def engine_has(field: str) -> bool:
    return field in {f.name for f in dataclasses.fields(SamplingParams)}


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
    name: str
    age: int


def test_structured_output(api) -> None:
    structured = chat_model(api, max_tokens=48).with_structured_output(Person, method="json_schema")
    if not engine_has("response_format"):
        with pytest.raises(openai.BadRequestError, match="response_format: not supported by this server's engine yet"):
            structured.invoke("Alice is 30.")
        return
    person = structured.invoke("Alice is 30.")
    assert isinstance(person, Person)


def test_bind_tools(api) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    bound = chat_model(api, max_tokens=48).bind_tools([add], tool_choice="add")
    if not engine_has("tools"):
        with pytest.raises(openai.BadRequestError, match="tools: not supported by this server's engine yet"):
            bound.invoke("What is 2 + 3?")
        return
    msg = bound.invoke("What is 2 + 3?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "add"
