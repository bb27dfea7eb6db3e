"""OpenAI API request bodies (what clients send) and the response, chunk and error builders.

Fields OpenAI defines are accepted; a field the server does not know is refused with a 400 naming it,
so a client never believes an option took effect when it did not. The schema checks ranges; whether the
values can be decoded is the engine's answer (bridge.py: `engine.validate`). Strings with lone surrogates (`"\\ud800"` in JSON) cannot be encoded as UTF-8 by anything
downstream, so they are refused here with the field's path.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(_Body):
    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        if where := _surrogate(data, ""):
            raise ValueError(f"{where.lstrip('.')}: text with a lone surrogate (invalid Unicode) is refused")
        return data


def _surrogate(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path or "body" if any("\ud800" <= c <= "\udfff" for c in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((w for k, v in items if (w := _surrogate(v, f"{path}.{k}"))), None)


# --------------------------------------------------------------------------- chat messages and tools


class TextPart(_Body):
    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str = Field(description="The text.")


class FunctionCall(_Body):
    name: str = Field(description="The function's name.")
    arguments: str = Field(description="Its arguments, a JSON object as a string.")


class ToolCall(_Body):
    id: str = Field(description="The call's id (a tool message answers it by this id).")
    type: Literal["function"] = Field("function", description="Only function tools exist.")
    function: FunctionCall = Field(description="What is called.")


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(description="Who speaks.")
    content: str | list[TextPart] | None = Field(None, description="The text (or text parts); null beside tool calls.")
    name: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant turn's tool calls.")
    tool_call_id: str | None = Field(None, description="A tool message: the call it answers.")
    refusal: str | None = Field(None, description="Accepted and ignored (an assistant message sent back).")

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def for_template(self, content: str) -> dict[str, Any]:
        """The message as chat templates take it: `developer` is the system role under its newer name."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": _args(c)}}
                for c in self.tool_calls
            ]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


def _args(call: ToolCall) -> Any:
    """Templates expect arguments as a mapping; keep the string when it is not JSON."""
    try:
        return json.loads(call.function.arguments)
    except json.JSONDecodeError:
        return call.function.arguments


class FunctionDef(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The function's name.")
    description: str | None = Field(None, description="What it does (shown to the model).")
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of its arguments.")
    strict: bool | None = Field(None, description="Arguments must follow the schema exactly.")


class Tool(_Body):
    type: Literal["function"] = Field(description="Only function tools exist.")
    function: FunctionDef = Field(description="The function.")


class NamedToolChoice(_Body):
    type: Literal["function"] = Field(description="Force this function.")
    function: dict[str, str] = Field(description="{name: ...}")


class JsonSchemaFormat(_Body):
    name: str = Field(description="A name for the schema.")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="The JSON Schema.")
    description: str | None = Field(None, description="What the output is.")
    strict: bool | None = Field(None, description="Follow the schema exactly.")


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = Field(description="Plain text, any JSON object, or JSON.")
    json_schema: JsonSchemaFormat | None = Field(None, description="The schema, for type json_schema.")

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only then")
        return self


class StreamOptions(_Body):
    include_usage: bool = Field(False, description="Add a last chunk with token usage.")


# --------------------------------------------------------------------------- requests


class _Sampling(_Request):
    model: str = Field(description="Model id: the base model's id or a loaded adapter's name.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (default: the server's).")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the output (not included).")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="Makes sampling reproducible.")
    stream: bool = Field(False, description="Stream server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="{include_usage: true} adds a usage chunk.")
    n: int = Field(1, ge=1, description="Choices to generate (up to the server's limits.max_n).")
    user: str | None = Field(None, description="End-user id (stored, PII-redacted, when logging is on).")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="Penalty for tokens already present.")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="Penalty by how often a token occurred.")
    logit_bias: dict[str, float] | None = Field(None, description="Token id (as a string) -> bias, -100..100.")

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ValueError("stop: at most 4 strings")
        return tuple(s for s in stops if s)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name for max_tokens.")
    logprobs: bool | None = Field(None, description="Return each output token's log probability.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="And this many alternatives per token.")
    response_format: ResponseFormat | None = Field(None, description="text, json_object or json_schema.")
    tools: list[Tool] | None = Field(None, description="Functions the model may call.")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="Whether and which tool must be called."
    )
    parallel_tool_calls: bool | None = Field(None, description="Allow several tool calls in one turn.")


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="A prompt, or a list of prompts (one choice set each).")
    echo: bool = Field(False, description="Put the prompt in front of the completion.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Log probabilities of this many top tokens.")
    best_of: int | None = Field(None, ge=1, description="Only best_of == n is accepted (no server-side ranking).")
    suffix: str | None = Field(None, description="Not supported (only null or empty is accepted).")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class FeedbackRequest(_Request):
    request_id: str = Field(description="The x-request-id of the response being rated.")
    rating: int = Field(ge=-1, le=1, description="-1 bad, 0 neutral, 1 good.")
    corrected: str | None = Field(None, description="A better answer, for review and retraining.")
    comment: str | None = Field(None, max_length=4000, description="Free text.")


class AdapterRequest(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Model id clients will use.")
    path: str = Field(description="Adapter folder or run directory inside one of the allowed adapter folders.")


# --------------------------------------------------------------------------- responses


def chat_choice(
    index: int,
    text: str | None,
    finish: str | None,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs}


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None = None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}


def chat_response(rid: str, model: str, choices: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
    return _envelope(rid, "chat.completion", model) | {"choices": choices, "usage": usage}


def completion_response(rid: str, model: str, choices: list[dict[str, Any]], usage: dict[str, int]) -> dict:
    return _envelope(rid, "text_completion", model) | {"choices": choices, "usage": usage}


def chunk_object(chat: bool) -> str:
    return "chat.completion.chunk" if chat else "text_completion"


def chunk(
    rid: str,
    model: str,
    chat: bool,
    text: str | None,
    finish: str | None,
    first: bool = False,
    index: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One SSE chunk for one choice; `extra` goes into the delta (chat: tool_calls) or the choice (logprobs)."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        if extra and "tool_calls" in extra:
            delta["tool_calls"] = extra["tool_calls"]
    else:
        choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
    if extra and "logprobs" in extra:
        choice["logprobs"] = extra["logprobs"]
    return _envelope(rid, chunk_object(chat), model) | {"choices": [choice]}


def usage_chunk(rid: str, model: str, chat: bool, usage: dict[str, int]) -> dict[str, Any]:
    """The last chunk with `stream_options.include_usage`: no choices, the request's usage."""
    return _envelope(rid, chunk_object(chat), model) | {"choices": [], "usage": usage}


def _envelope(rid: str, obj: str, model: str) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_card(model_id: str, parent: str | None = None) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "tunelab", "parent": parent}


def error_body(
    message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}
