"""Transcript preference data: `chosen` and `rejected` as whole dialogues in `\n\nHuman: ...\n\nAssistant: ...` form
(Anthropic's HH-RLHF and the many sets written like it), read without conversion.

Each side is split into turns at `Human:` / `Assistant:` markers that start the text or follow a blank line; the
turns before the last Assistant turn are the prompt and must be the same on both sides (a pair compares replies
to one conversation), the last Assistant turn is the reply. Text before the first marker, a side that does not end
with an Assistant turn, or two sides with different prompts are errors naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tunelab.data.fields import FieldError, got
from tunelab.data.records import Message, Preference

ROLE_OF = {"human": "user", "user": "user", "assistant": "assistant"}
_MARKER = re.compile(r"(?:^|\n\n)(Human|User|Assistant):[ \t]?", re.IGNORECASE)


def is_transcript(value: Any) -> bool:
    """A string that reads as a Human/Assistant dialogue (what `preference` hands to `transcript`)."""
    return isinstance(value, str) and bool(_MARKER.match(value.lstrip("\n"))) and "Assistant:" in value


def turns(text: str, field: str) -> tuple[Message, ...]:
    """The dialogue's messages, in order; the text of each turn is stripped."""
    marks = list(_MARKER.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise FieldError(field, "expected a transcript starting with 'Human:' (turns '\\n\\nHuman: ...' and "
                         "'\\n\\nAssistant: ...')")  # fmt: skip
    out = []
    for m, nxt in zip(marks, [*marks[1:], None]):
        body = text[m.end() : nxt.start() if nxt else len(text)].strip()
        out.append(Message(ROLE_OF[m.group(1).lower()], body))
    return tuple(out)


def _side(row: Mapping[str, Any], field: str) -> tuple[tuple[Message, ...], Message]:
    value = row.get(field)
    if not isinstance(value, str):
        raise FieldError(field, f"expected a transcript string, {got(value)}")
    msgs = turns(value, field)
    if msgs[-1].role != "assistant":
        raise FieldError(field, "the transcript must end with an 'Assistant:' turn: the reply being compared")
    if not msgs[-1].content:
        raise FieldError(field, "the last 'Assistant:' turn is empty")
    return msgs[:-1], msgs[-1]


def transcript(row: Mapping[str, Any]) -> Preference:
    """{chosen, rejected} transcripts -> a Preference over their shared prompt."""
    (prompt, chosen), (other, rejected) = _side(row, "chosen"), _side(row, "rejected")
    if not prompt:
        raise FieldError("chosen", "the transcript has no 'Human:' turn before its last 'Assistant:' turn")
    if prompt != other:
        at = next((i for i, (a, b) in enumerate(zip(prompt, other)) if a != b), min(len(prompt), len(other)))
        raise FieldError("rejected", f"the dialogue before the last 'Assistant:' turn differs from chosen's "
                         f"(turn {at + 1}); a pair compares two replies to one conversation")  # fmt: skip
    context = tuple(Message(m.role, m.content, 0.0) if m.role == "assistant" else m for m in prompt)
    return Preference(context, (chosen,), (rejected,))
