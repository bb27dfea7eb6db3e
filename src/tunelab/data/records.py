"""Canonical records: what every data format turns a row into.

Records are plain frozen dataclasses, independent of any tokenizer. SFT consumes `Conversation`,
`PromptCompletion` and `Text`; preference methods consume `Preference` (paired) and `UnpairedPreference`
(KTO-style good/bad); online RL (grpo) consumes `Prompt`; head methods consume `Labelled` (classify) and
`TokenTags` (ner). `Message.weight` 0 excludes an assistant turn from the loss; None means the default
for its role (assistant turns train, everything else does not unless `train_on_inputs`).

Tool use (OpenAI style): an assistant message may carry `tool_calls`, a `tool` message is the result of one,
and a conversation may list its `tools` (function schemas). JSON payloads are kept as JSON text so that
records stay hashable; `message_dict` / `tool_schemas` turn them back into what chat templates read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant makes; `arguments` is the JSON text of an object."""

    name: str
    arguments: str
    id: str | None = None

    def args(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.arguments)
        return parsed


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    weight: float | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # assistant only
    tool_call_id: str | None = None  # tool only: the call this is the result of
    name: str | None = None  # tool only: the function that produced this result


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    tools: tuple[str, ...] = ()  # JSON text of each OpenAI function schema offered to the model


def message_dict(m: Message) -> dict[str, Any]:
    """A message as chat templates read it (OpenAI shape; tool-call arguments as an object, as transformers
    documents). A message without tool fields is exactly {role, content}, as it always was."""
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [
            {**({"id": c.id} if c.id else {}), "type": "function", "function": {"name": c.name, "arguments": c.args()}}
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        d["tool_call_id"] = m.tool_call_id
    if m.name:
        d["name"] = m.name
    return d


def tool_schemas(tools: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """The `tools=` argument for `apply_chat_template`: None when the conversation offers none."""
    return [json.loads(t) for t in tools] or None


def message_text(m: Message) -> str:
    """The content plus each tool call as one JSON line: what quality checks compare (never a rendering)."""
    calls = [json.dumps({"name": c.name, "arguments": c.args()}, ensure_ascii=False) for c in m.tool_calls]
    return "\n".join([m.content, *calls]) if calls else m.content


@dataclass(frozen=True)
class PromptCompletion:
    """Plain text: the prompt is context, the completion is what the model learns to write."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class Text:
    """Raw text for continued pretraining: every token trains."""

    text: str


@dataclass(frozen=True)
class Preference:
    """A prompt (conversation so far) with a chosen and a rejected assistant reply."""

    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnpairedPreference:
    """A prompt with one completion labelled good (True) or bad (False), as KTO uses."""

    prompt: tuple[Message, ...]
    completion: tuple[Message, ...]
    label: bool
    tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """A conversation for the model to answer (online RL samples the answers itself)."""

    messages: tuple[Message, ...]


@dataclass(frozen=True)
class Labelled:
    """A text and its class, for a sequence-classification head."""

    text: str
    label: str


@dataclass(frozen=True)
class TokenTags:
    """Words with one BIO tag each (O, B-TYPE, I-TYPE), for a token-classification head (NER)."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]


Record = Conversation | PromptCompletion | Text | Preference | UnpairedPreference | Prompt | Labelled | TokenTags
SFT_RECORDS = (Conversation, PromptCompletion, Text)
