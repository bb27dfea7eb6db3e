"""OpenAI API request bodies (the subset we serve) and response builders.

Unknown request fields are refused with a 400 naming them rather than silently ignored, so a client
relying on, say, `logprobs` learns it is unsupported. `n` must be 1. `stop` takes a string or up to 4.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.serve.decode import SamplingParams


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Body):
    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str = Field(description="The text.")


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"] = Field(description="Who speaks.")
    content: str | list[TextPart] = Field(description="The message text (or a list of text parts).")
    name: str | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _Sampling(_Body):
    model: str = Field(description="Model id: the base model's id or a loaded adapter's name.")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the output (not included).")
    seed: int | None = Field(None, description="Makes sampling reproducible.")
    stream: bool = Field(False, description="Stream server-sent events.")
    stream_options: dict[str, bool] | None = Field(None, description="{include_usage: true} adds a usage chunk.")
    n: int = Field(1, ge=1, le=1, description="Only 1 choice is supported.")
    user: str | None = Field(None, description="End-user id (stored with the request when logging is on).")

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ValueError("stop: at most 4 strings")
        return tuple(s for s in stops if s)

    def sampling(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, max_tokens, self.stops(), self.seed)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name for max_tokens.")


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="The prompt (a list must hold exactly one string).")

    def prompt_text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ValueError("prompt: only one prompt per request is supported")
            return self.prompt[0]
        return self.prompt


class FeedbackRequest(_Body):
    request_id: str = Field(description="The x-request-id of the response being rated.")
    rating: int = Field(ge=-1, le=1, description="-1 bad, 0 neutral, 1 good.")
    corrected: str | None = Field(None, description="A better answer, for review and retraining.")
    comment: str | None = Field(None, max_length=4000, description="Free text.")


class AdapterRequest(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Model id clients will use.")
    path: str = Field(description="Adapter folder or run directory inside one of the allowed adapter folders.")


def chat_response(rid: str, model: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage,
    }


def completion_response(rid: str, model: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "usage": usage,
    }


def chunk(rid: str, model: str, chat: bool, text: str | None, finish: str | None, first: bool = False) -> dict:
    if chat:
        delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": None}}
