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

Tool use: a conversation's `tools` go to the template as `tools=`, tool calls and results as OpenAI-shaped
messages. An assistant turn's calls are part of its span, so they train like its text; tool results are
input. Templates differ in whether they can show tools at all, and one that cannot usually ignores them
without a word, so `template_checks` verifies each rendering and refuses the record otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tunelab.data import template_checks
from tunelab.data.records import (
    Conversation,
    Message,
    Preference,
    Prompt,
    PromptCompletion,
    Record,
    Text,
    UnpairedPreference,
    message_dict,
    tool_schemas,
)
from tunelab.data.template_checks import TemplateError
from tunelab.textio import read_text

IGNORE = -100

# An assistant message's tool calls, after its content, each as <tool_call>{"name", "arguments"}</tool_call>
# (the Hermes/Qwen convention most ChatML models use). Shared by the fallback and the presets' ChatML template.
# transformers renders with trim_blocks (a newline right after a {% tag %} is dropped), hence {{ '\\n' }}.
TOOL_CALLS_JINJA = (
    "{% if m['tool_calls'] is defined %}{% for c in m['tool_calls'] %}"
    "{% set f = c['function'] if c['function'] is defined else c %}"
    "{% if m['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    '<tool_call>\n{"name": {{ f[\'name\'] | tojson }}, "arguments": '
    "{% if f['arguments'] is string %}{{ f['arguments'] }}{% else %}{{ f['arguments'] | tojson }}{% endif %}"
    "}\n</tool_call>{% endfor %}{% endif %}"
)

# Used when a tokenizer has no chat template (e.g. base models). Documented in docs/data.md. Without tools,
# tool calls and tool results the text is what it always was.
FALLBACK_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% if tools %}### Tools:{% for t in tools %}{{ '\\n' }}{{ t | tojson }}{% endfor %}{{ '\\n\\n' }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}" + TOOL_CALLS_JINJA + "{{ eos_token }}\n\n"
    "{% else %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # aligned with input_ids (not shifted); IGNORE = no loss

    @property
    def n_trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


class Encoded(NamedTuple):
    """An Example as arrays (the batched path): int32 ids and a boolean loss mask (label = id where True)."""

    ids: np.ndarray
    mask: np.ndarray

    def example(self) -> Example:
        ids = self.ids.tolist()
        return Example(ids, np.where(self.mask, self.ids, IGNORE).tolist())


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
    messages: tuple[Message, ...] | list[dict[str, Any]],
    template: str,
    generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    msgs = [message_dict(m) if isinstance(m, Message) else m for m in messages]
    extra = {"tools": tools} if tools else {}  # no `tools` key at all without tools: renders as it always did
    try:
        return tokenizer.apply_chat_template(
            msgs, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt, **extra
        )
    except Exception as e:  # jinja raises TemplateError / exceptions the template itself raises
        roles = ", ".join(m["role"] for m in msgs) + (" and tools" if tools else "")
        raise TemplateError(f"chat template failed on a conversation with roles [{roles}]: {e}") from None


class RecordRenderer:
    """`render` for records' messages, the same text with less work per call: the template is compiled once and
    rendered with the arguments apply_chat_template would give it (a record's message dicts are plain JSON,
    without the None values and message objects apply_chat_template prepares). Where transformers does not
    offer its compiled templates, the canonical `render` is used."""

    def __init__(self, tokenizer: Any, template: str) -> None:
        self.tok, self.template = tokenizer, template
        self.specials = dict(tokenizer.special_tokens_map)
        self.compiled = _compiled(template)

    def __getstate__(self) -> dict[str, Any]:  # shipped to Ray workers: compiled templates do not pickle
        return {**self.__dict__, "compiled": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.compiled = _compiled(self.template)

    def __call__(self, messages: tuple[Message, ...], generation_prompt: bool, tools: Any) -> str:
        if self.compiled is None:
            return render(self.tok, messages, self.template, generation_prompt, tools)
        msgs = [message_dict(m) for m in messages]
        try:
            return str(self.compiled.render(messages=msgs, tools=tools or None, documents=None,
                                            add_generation_prompt=generation_prompt, **self.specials))  # fmt: skip
        except Exception as e:  # jinja raises TemplateError / exceptions the template itself raises
            roles = ", ".join(m["role"] for m in msgs) + (" and tools" if tools else "")
            raise TemplateError(f"chat template failed on a conversation with roles [{roles}]: {e}") from None


def _compiled(template: str) -> Any:
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(template)
    except Exception:  # another transformers: no fast path (and a bad template fails in `render`)
        return None


def prompt_text(
    tokenizer: Any,
    messages: tuple[Message, ...] | list[dict[str, Any]],
    template: str,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """What a model sees before it answers: the conversation plus the assistant generation prompt."""
    return render(tokenizer, messages, template, generation_prompt=True, tools=tools)


class Encoder:
    """Turns records into Examples for one tokenizer, template and masking policy."""

    def __init__(self, tokenizer: Any, template: str, train_on_inputs: bool = False) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError("tunelab needs a fast (Rust) tokenizer to map characters to tokens; this one is slow")
        self.tok = tokenizer
        self.template = template
        self.renderer = RecordRenderer(tokenizer, template)
        self.train_on_inputs = train_on_inputs
        bos = tokenizer.bos_token_id
        self.bos = bos if bos is not None and tokenizer("a").input_ids[:1] == [bos] else None

    def encode(self, record: Record) -> Example:
        return self.encode_many([record])[0].example()

    def encode_many(self, records: Sequence[Record]) -> list[Encoded]:
        """Each record rendered once per span boundary it needs and all of them tokenized in one batched call."""
        return self.tokenize_many([self.text(r) for r in records])

    def text(self, record: Record) -> tuple[str, list[tuple[int, int]]]:
        """The text to tokenize and its trained character spans."""
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
        return text, spans

    def encode_views(self, record: Record) -> list[tuple[str, Example]]:
        """Every tokenized view of any record: one for SFT records, chosen and rejected for preference
        pairs, the labelled completion for unpaired preference, the prompt of a prompt record (used by
        validate/prepare --debug)."""
        if isinstance(record, Preference):
            return [("chosen", self.encode(Conversation(record.prompt + record.chosen, record.tools))),
                    ("rejected", self.encode(Conversation(record.prompt + record.rejected, record.tools)))]  # fmt: skip
        if isinstance(record, UnpairedPreference):
            tag = "completion (good)" if record.label else "completion (bad)"
            return [(tag, self.encode(Conversation(record.prompt + record.completion, record.tools)))]
        if isinstance(record, Prompt):  # grpo: nothing trains here, the model writes its own answers
            text = prompt_text(self.tok, record.messages, self.template)
            template_checks.check_rendered(record.messages, text)
            return [("prompt", self._tokenize(text, []))]
        return [("", self.encode(record))]

    def _render(self, msgs: tuple[Message, ...], tools: Any, generation_prompt: bool = False) -> str:
        return self.renderer(msgs, generation_prompt, tools)

    def _conversation(self, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
        msgs, tools = conv.messages, tool_schemas(conv.tools)
        full = self._render(msgs, tools)
        if tools:
            template_checks.check_tools_shown(full, self._render(msgs, None), conv.tools)
        template_checks.check_rendered(msgs, full)
        spans = []
        for i, m in enumerate(msgs):
            trains = m.role == "assistant" and m.weight != 0
            if not (trains or m.tool_calls):
                continue
            before = self._render(msgs[:i], tools, generation_prompt=True)
            upto = full if i == len(msgs) - 1 else self._render(msgs[: i + 1], tools)  # the last turn: all of it
            if not (upto.startswith(before) and full.startswith(upto)):
                if not trains:  # context only: its calls were found in the whole text above
                    continue
                raise TemplateError(
                    f"the chat template renders turn {i} differently depending on what follows, so the loss mask "
                    "cannot be found; set model.chat_template: fallback (or a template without that behaviour)"
                )
            template_checks.check_calls_in_turn(m, i, upto[len(before) :])
            if trains:
                spans.append((len(before), len(upto.rstrip())))
        return full, spans

    def _tokenize(self, text: str, spans: list[tuple[int, int]]) -> Example:
        return self.tokenize_many([(text, spans)])[0].example()

    def tokenize_many(self, texts: Sequence[tuple[str, list[tuple[int, int]]]]) -> list[Encoded]:
        """Tokenize texts in one call; a token carries loss when its start offset lies in one of its text's
        spans. The spans' token bounds are looked up in the encoding (no per-token Python work)."""
        encs = self._backend().encode_batch([t for t, _ in texts], add_special_tokens=False)
        return [self._arrays(enc, text, spans) for enc, (text, spans) in zip(encs, texts)]

    def _backend(self) -> Any:
        """The Rust tokenizer, set up as `tokenizer(text, add_special_tokens=False)` sets it up (no truncation,
        no padding, its own special-token splitting), so the ids are the same as that call's."""
        from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

        tok = self.tok
        tok.set_truncation_and_padding(padding_strategy=PaddingStrategy.DO_NOT_PAD, max_length=None, stride=0,
                                       truncation_strategy=TruncationStrategy.DO_NOT_TRUNCATE,
                                       pad_to_multiple_of=None, padding_side=None)  # fmt: skip
        backend = tok.backend_tokenizer
        if backend.encode_special_tokens != bool(tok.split_special_tokens):
            backend.encode_special_tokens = bool(tok.split_special_tokens)
        return backend

    def _arrays(self, enc: Any, text: str, spans: list[tuple[int, int]]) -> Encoded:
        ids = np.array(enc.ids, dtype=np.int32)
        mask = np.zeros(len(ids), dtype=bool)
        for s, e in spans:
            a, b = _first_at(enc, s, len(text)), _first_at(enc, e, len(text))
            if a is None or b is None:  # a character no token covers: compare every token's start
                starts = np.array([o[0] for o in enc.offsets], dtype=np.int64)
                mask |= (starts >= s) & (starts < e)
            else:
                mask[a:b] = True
        if self.bos is not None and ids[:1].tolist() != [self.bos]:
            ids, mask = np.concatenate([[self.bos], ids]).astype(np.int32), np.concatenate([[False], mask])
        return Encoded(ids, mask)


def _first_at(enc: Any, pos: int, size: int) -> int | None:
    """Index of the first token whose start offset is >= pos (token offsets only grow)."""
    if pos >= size:
        return len(enc)
    t = enc.char_to_token(pos)
    if t is None:
        return None
    return t if enc.token_to_chars(t)[0] >= pos else t + 1


def truncate(example: Example, max_length: int) -> Example:
    return Example(example.input_ids[:max_length], example.labels[:max_length])
