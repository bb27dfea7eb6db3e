"""One client for OpenAI-compatible endpoints (the judge, an endpoint teacher, model-based augmentation).

The official `openai` client does the timeouts and retries with backoff; this module adds the one API-key
lookup (an explicit key, else the named environment variable; a keyless local server gets a placeholder, since
the client insists on a non-empty key) and turns a failed request into text that names the endpoint, so callers
decide whether a failure is fatal (augmentation) or counted (the judge, the teacher).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunelab.errors import ConfigError

KEYLESS = "not-needed"  # what a local server without keys is sent


def api_key(env: str | None, where: str, explicit: str | None = None, required: bool = False) -> str:
    """`explicit`, else $`env`; a missing variable is a ConfigError naming `where` when `required`."""
    if explicit:
        return explicit
    key = os.environ.get(env) if env else None
    if key:
        return key
    if required and env:
        raise ConfigError(f"{where}.api_key_env: environment variable {env} is not set "
                          "(set it, or set api_key_env: null for a keyless local endpoint)")  # fmt: skip
    return KEYLESS


@dataclass(frozen=True)
class Endpoint:
    base_url: str | None
    key: str = KEYLESS
    timeout: float = 60.0
    max_retries: int = 2

    def client(self) -> Any:
        from openai import OpenAI  # imported when an endpoint is used, not at CLI start

        return OpenAI(base_url=self.base_url, api_key=self.key, timeout=self.timeout, max_retries=self.max_retries)


@dataclass(frozen=True)
class Reply:
    text: str | None  # None when the request failed
    error: str | None = None
    finish_reason: str | None = None


def chat(client: Any, model: str, messages: Sequence[dict[str, str]], **kwargs: Any) -> Reply:
    """One chat completion; a request that still fails after the client's retries becomes a Reply with its error."""
    from openai import OpenAIError

    try:
        resp = client.chat.completions.create(model=model, messages=list(messages), **kwargs)
    except OpenAIError as e:
        return Reply(None, f"{type(e).__name__}: {e}")
    if not resp.choices:
        return Reply(None, "the endpoint returned no choices")
    choice = resp.choices[0]
    return Reply(choice.message.content, finish_reason=choice.finish_reason)


def complete(client: Any, model: str, prompt: str, **kwargs: Any) -> Reply:
    """One plain-text completion (/v1/completions), like `chat`."""
    from openai import OpenAIError

    try:
        resp = client.completions.create(model=model, prompt=prompt, **kwargs)
    except OpenAIError as e:
        return Reply(None, f"{type(e).__name__}: {e}")
    if not resp.choices:
        return Reply(None, "the endpoint returned no choices")
    return Reply(resp.choices[0].text, finish_reason=resp.choices[0].finish_reason)
