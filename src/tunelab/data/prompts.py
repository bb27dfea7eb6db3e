"""Prompt data for online RL (grpo): records with a prompt -> `PromptItem`s (the prompt's tokens, as the
model will see them before it answers).

Which records: `prompt` rows (a string is one user turn); and the prompt side of other records, so
existing data can be reused: a conversation's turns before its last assistant reply, a preference pair's
or KTO item's prompt, and a plain prompt/completion record's prompt, which stays raw text (no chat
template), as SFT trained it. Completions and answers in those rows are not read. Raw text records have
no prompt and are rejected with the file and line. Chat prompts are rendered with the chat template and
its generation prompt.

Over-long prompts (more than max_length - max_new_tokens tokens, so prompt plus completion fit in
max_length) are cut from the left, keeping BOS and the end (the question is usually last), or dropped
with truncation: drop; both are counted. Each item carries a unique `index` (train and eval together):
batches are tensors, so a batch names its prompts by index and the method looks them up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from tunelab.config import DatasetConfig, RunConfig
from tunelab.data.prepared import DROPPED, TRUNCATED, Kind, Outcome, Prepared, prepare_kind
from tunelab.data.records import Conversation, Message, Preference, Prompt, PromptCompletion, Record, UnpairedPreference
from tunelab.data.sources import Row
from tunelab.data.tokenize import chat_template_for, prompt_text
from tunelab.errors import DataError

PromptSpec = str | tuple[Message, ...]  # a raw-text prompt, or a chat prompt (messages)


@dataclass
class PromptItem:
    input_ids: list[int]
    prompt: PromptSpec
    index: int = 0

    @property
    def length(self) -> int:
        return len(self.input_ids)


def prompt_of(record: Record) -> PromptSpec | None:
    """The prompt of a record, or None when it has none (raw text, a conversation without a reply)."""
    if isinstance(record, Prompt):
        return record.messages
    if isinstance(record, PromptCompletion):
        return record.prompt
    if isinstance(record, (Preference, UnpairedPreference)):
        return record.prompt
    if isinstance(record, Conversation):
        last = max((i for i, m in enumerate(record.messages) if m.role == "assistant"), default=0)
        return record.messages[:last] or None
    return None


def prompt_spec(prompt: str | Sequence[Mapping[str, str]]) -> PromptSpec:
    """An eval prompt (raw text, or messages as {role, content} dicts) as a PromptSpec."""
    return prompt if isinstance(prompt, str) else tuple(Message(m["role"], m["content"]) for m in prompt)


def question_text(prompt: PromptSpec) -> str:
    """What a reward function or judge sees as the prompt: raw text as is, a single user turn's content,
    otherwise the conversation as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0].content
    return "\n".join(f"{m.role}: {m.content}" for m in prompt)


def collate_prompts(items: Sequence[PromptItem], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompt ids (generation continues every row at the same column) and the item indices."""
    width = max(it.length for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        ids[row, width - it.length :] = torch.tensor(it.input_ids)
        mask[row, width - it.length :] = 1
    return {"prompt_ids": ids, "prompt_mask": mask, "index": torch.tensor([it.index for it in items])}


class PromptKind(Kind[PromptItem]):
    """Records with a prompt -> PromptItems (the prompt's tokens, cut to `budget`)."""

    def __init__(self, tokenizer: Any, template: str, budget: int, truncation: str) -> None:
        self.encoder = _Encoder(tokenizer, template, budget, truncation)

    def check(self, ds: DatasetConfig, fmt: str, record: Record, row: Row) -> None:
        _prompt(record, row)

    def encode(self, batch: list[tuple[Record, Row]]) -> list[Outcome[PromptItem]]:
        return [self.encoder(_prompt(rec, row)) for rec, row in batch]

    def finish(
        self, train: Sequence[PromptItem], evals: Sequence[PromptItem]
    ) -> tuple[list[PromptItem], list[PromptItem]]:
        """A copy per pick (a repeated record is two items), each with its unique index."""
        items = [replace(it) for it in [*train, *evals]]
        for i, item in enumerate(items):
            item.index = i
        return items[: len(train)], items[len(train) :]


def prepare_prompts(cfg: RunConfig, tokenizer: Any) -> Prepared[PromptItem]:
    """Like `pipeline.prepare` for grpo: read, split/mix, render and tokenize prompts, count, report."""
    data = cfg.data
    budget = data.max_length - cfg.method.grpo.max_new_tokens
    if data.train and budget < 8:
        raise DataError(f"data.max_length {data.max_length} leaves {budget} prompt tokens after "
                        f"method.grpo.max_new_tokens {cfg.method.grpo.max_new_tokens}; raise max_length", where="config")  # fmt: skip
    template = chat_template_for(tokenizer, cfg.model.chat_template)
    return prepare_kind(cfg, PromptKind(tokenizer, template, budget, data.truncation))


def _prompt(record: Record, row: Row) -> PromptSpec:
    prompt = prompt_of(record)
    if prompt is None:
        raise row.error(f"method grpo needs a prompt; {type(record).__name__} records have none (use rows with "
                        "a prompt field: a string or a list of messages)", "prompt")  # fmt: skip
    return prompt


class _Encoder:
    def __init__(self, tokenizer: Any, template: str, budget: int, truncation: str) -> None:
        self.tok, self.template, self.budget, self.truncation = tokenizer, template, budget, truncation
        bos = tokenizer.bos_token_id
        self.bos = bos if bos is not None and tokenizer("a").input_ids[:1] == [bos] else None

    def ids(self, prompt: PromptSpec) -> list[int]:
        if isinstance(prompt, str):  # raw text, like SFT's prompt/completion records: the tokenizer's own BOS
            return list(self.tok(prompt).input_ids)
        ids = list(self.tok(prompt_text(self.tok, prompt, self.template), add_special_tokens=False).input_ids)
        return [self.bos, *ids] if self.bos is not None and ids[:1] != [self.bos] else ids

    def __call__(self, prompt: PromptSpec) -> Outcome[PromptItem]:
        ids, flags = self.ids(prompt), 0
        if len(ids) > self.budget:
            if self.truncation == "drop":
                return Outcome(None, flags=DROPPED)
            flags = TRUNCATED
            head = 1 if self.bos is not None and ids[:1] == [self.bos] else 0
            ids = ids[:head] + ids[len(ids) - self.budget + head :]
        return Outcome(PromptItem(ids, prompt), len(ids), 0, len(ids), flags)
