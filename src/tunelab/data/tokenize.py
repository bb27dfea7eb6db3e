"""The one tokenization path: record -> input_ids + labels (the loss mask).

Conversations are rendered with the model's own chat template (or the fallback below when it has none)
and tokenized ONCE as a whole, so training sees exactly the tokens inference sees. Which tokens train is
decided on characters, not tokens: for each assistant turn the span runs from the end of the prompt that
`add_generation_prompt=True` renders to the end of that turn's rendering (trailing whitespace excluded),
so it covers the reply and the end-of-turn/EOS token after it — models that never learn to stop are a top
complaint. Tokens whose start offset lies in a span carry their own id as label; all others get -100.
This needs a "fast" tokenizer (offsets) and a template whose renderings of a conversation's prefixes are
prefixes of each other; a template that breaks that is reported with the turn where it happens.

BOS appears exactly once: templates that write `bos_token` themselves are tokenized without special
tokens; for the others, BOS is prepended when the tokenizer adds one by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.records import (
    Conversation,
    Message,
    Preference,
    Prompt,
    PromptCompletion,
    Record,
    Text,
    UnpairedPreference,
)
from tunelab.errors import TunelabError
from tunelab.textio import read_text

IGNORE = -100

# Used when a tokenizer has no chat template (e.g. base models). Documented in docs/data.md.
FALLBACK_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n"
    "{% else %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


class TemplateError(TunelabError):
    """The chat template cannot be used to find which tokens carry loss."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # aligned with input_ids (not shifted); IGNORE = no loss

    @property
    def n_trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def chat_template_for(tokenizer: Any, override: str | None = None) -> str:
    """The template to use: an override (fallback | Jinja string | .jinja path), the model's, or the fallback."""
    if override == "fallback":
        return FALLBACK_TEMPLATE
    if override:
        p = Path(override)
        return read_text(p, "chat template") if p.suffix == ".jinja" and p.is_file() else override
    return tokenizer.chat_template or FALLBACK_TEMPLATE


def render(
    tokenizer: Any,
    messages: tuple[Message, ...] | list[dict[str, str]],
    template: str,
    generation_prompt: bool = False,
) -> str:
    msgs = [{"role": m.role, "content": m.content} if isinstance(m, Message) else m for m in messages]
    try:
        return tokenizer.apply_chat_template(
            msgs, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as e:  # jinja raises TemplateError / exceptions the template itself raises
        roles = ", ".join(m["role"] for m in msgs)
        raise TemplateError(f"chat template failed on a conversation with roles [{roles}]: {e}") from None


def prompt_text(tokenizer: Any, messages: tuple[Message, ...] | list[dict[str, str]], template: str) -> str:
    """What a model sees before it answers: the conversation plus the assistant generation prompt."""
    return render(tokenizer, messages, template, generation_prompt=True)


class Encoder:
    """Turns records into Examples for one tokenizer, template and masking policy."""

    def __init__(self, tokenizer: Any, template: str, train_on_inputs: bool = False) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError("tunelab needs a fast (Rust) tokenizer to map characters to tokens; this one is slow")
        self.tok = tokenizer
        self.template = template
        self.train_on_inputs = train_on_inputs
        bos = tokenizer.bos_token_id
        self.bos = bos if bos is not None and tokenizer("a").input_ids[:1] == [bos] else None

    def encode(self, record: Record) -> Example:
        if isinstance(record, Conversation):
            text, spans = self._conversation(record)
        elif isinstance(record, PromptCompletion):
            eos = self.tok.eos_token or ""
            text = record.prompt + record.completion + eos
            spans = [(len(record.prompt), len(text))]
        elif isinstance(record, Text):
            text = record.text + (self.tok.eos_token or "")
            spans = [(0, len(text))]
        else:
            raise TypeError(f"{type(record).__name__} records are not used for SFT tokenization")
        if self.train_on_inputs:
            spans = [(0, len(text))]
        return self._tokenize(text, spans)

    def encode_views(self, record: Record) -> list[tuple[str, Example]]:
        """Every tokenized view of any record: one for SFT records, chosen and rejected for preference
        pairs, the labelled completion for unpaired preference, the prompt of a prompt record (used by
        validate/prepare --debug)."""
        if isinstance(record, Preference):
            return [("chosen", self.encode(Conversation(record.prompt + record.chosen))),
                    ("rejected", self.encode(Conversation(record.prompt + record.rejected)))]  # fmt: skip
        if isinstance(record, UnpairedPreference):
            tag = "completion (good)" if record.label else "completion (bad)"
            return [(tag, self.encode(Conversation(record.prompt + record.completion)))]
        if isinstance(record, Prompt):  # grpo: nothing trains here, the model writes its own answers
            return [("prompt", self._tokenize(prompt_text(self.tok, record.messages, self.template), []))]
        return [("", self.encode(record))]

    def _conversation(self, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
        msgs = conv.messages
        full = render(self.tok, msgs, self.template)
        spans = []
        for i, m in enumerate(msgs):
            if m.role != "assistant" or m.weight == 0:
                continue
            before = render(self.tok, msgs[:i], self.template, generation_prompt=True)
            upto = render(self.tok, msgs[: i + 1], self.template)
            if not (upto.startswith(before) and full.startswith(upto)):
                raise TemplateError(
                    f"the chat template renders turn {i} differently depending on what follows, so the loss mask "
                    "cannot be found; set model.chat_template: fallback (or a template without that behaviour)"
                )
            spans.append((len(before), len(upto.rstrip())))
        return full, spans

    def _tokenize(self, text: str, spans: list[tuple[int, int]]) -> Example:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        labels = [tid if any(s <= start < e for s, e in spans) else IGNORE for tid, (start, _) in zip(ids, offsets)]
        if self.bos is not None and ids[:1] != [self.bos]:
            ids, labels = [self.bos, *ids], [IGNORE, *labels]
        return Example(ids, labels)


def truncate(example: Example, max_length: int) -> Example:
    return Example(example.input_ids[:max_length], example.labels[:max_length])
