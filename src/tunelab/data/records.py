"""Canonical records: what every data format turns a row into.

Records are plain frozen dataclasses, independent of any tokenizer. SFT consumes `Conversation`,
`PromptCompletion` and `Text`; preference methods consume `Preference` (paired) and `UnpairedPreference`
(KTO-style good/bad); online RL (grpo) consumes `Prompt`; head methods consume `Labelled` (classify) and `TokenTags` (ner). `Message.weight` 0 excludes an assistant turn from the loss; None means the default
for its role (assistant turns train, everything else does not unless `train_on_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    weight: float | None = None


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]


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


@dataclass(frozen=True)
class UnpairedPreference:
    """A prompt with one completion labelled good (True) or bad (False), as KTO uses."""

    prompt: tuple[Message, ...]
    completion: tuple[Message, ...]
    label: bool


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
