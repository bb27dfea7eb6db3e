"""Checks that a chat template rendered what a record holds, for what templates tend to drop silently.

Chat templates that do not know tools usually ignore `tools=`, an assistant's `tool_calls` and sometimes the
`tool` role without an error, so the model would be trained on a conversation other than the data (a call
dropped and an empty turn trained). After each rendering these checks look for what must be in the text:
the offered tools (the text must differ from the rendering without them, and name every function), each
call's function name and argument keys and values inside its own assistant turn (so the call carries loss),
and each tool result's content. Values are looked for as written and as JSON escapes them, so templates that
lay calls out differently (JSON, XML, Python-style) all pass; a template that drops them does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from tunelab.data.records import Message, ToolCall
from tunelab.data.tool_rows import tool_names
from tunelab.errors import TunelabError

ADVICE = (
    "use a model whose chat template supports tools, or set model.chat_template to one that does "
    "(tunelab's `fallback` template and the presets' ChatML template do)"
)


class TemplateError(TunelabError):
    """The chat template cannot render a record faithfully, or the loss mask cannot be found in it.
    `field` names the part of the record at fault; the data pipeline adds the file and line."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:  # from a worker process with its field
        return TemplateError, (str(self), self.field)


def check_tools_shown(with_tools: str, without: str, tools: Sequence[str]) -> None:
    names = tool_names(tools)
    if with_tools == without:
        raise TemplateError(
            "the chat template ignores `tools`: the conversation renders the same with and without them, "
            f"so the model would never see the functions ({', '.join(names)}); {ADVICE}",
            field="tools",
        )
    missing = [n for n in names if n not in with_tools]
    if missing:
        raise TemplateError(f"the chat template does not show the tool(s) {', '.join(missing)}; {ADVICE}", "tools")


def check_rendered(msgs: Sequence[Message], text: str) -> None:
    """Every tool call and tool result appears somewhere in the rendered conversation."""
    for i, m in enumerate(msgs):
        for call in m.tool_calls:
            _require_call(call, i, text, "the conversation")
        if m.role == "tool" and not _occurs(m.content.strip(), text):
            raise TemplateError(
                f"the chat template drops the tool result of turn {i}: its content is not in the rendered "
                f"text; {ADVICE}",
                field="content",
            )


def check_calls_in_turn(m: Message, i: int, turn: str) -> None:
    """The calls of assistant turn `i` are inside that turn's own text, the part that carries loss."""
    for call in m.tool_calls:
        _require_call(call, i, turn, f"turn {i}'s own text (what trains)")


def _require_call(call: ToolCall, i: int, text: str, where: str) -> None:
    absent = next((piece for piece in (call.name, *_argument_pieces(call.args())) if not _occurs(piece, text)), None)
    if absent is not None:
        what = "its function name" if absent == call.name else f"the argument text {absent!r}"
        raise TemplateError(
            f"the chat template does not render the tool call {call.name}({call.arguments}) of turn {i}: "
            f"{what} is not in {where}; {ADVICE}",
            field="tool_calls",
        )


def _argument_pieces(value: Any) -> Iterator[Any]:
    """Keys and leaf values of the arguments: what any faithful rendering must contain."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _argument_pieces(v)
    elif isinstance(value, list):
        for v in value:
            yield from _argument_pieces(v)
    else:
        yield value


def _occurs(piece: Any, text: str) -> bool:
    if isinstance(piece, str):
        forms = {piece, json.dumps(piece, ensure_ascii=False)[1:-1], json.dumps(piece)[1:-1]}
    else:  # numbers, true/false/null as JSON writes them, or as Python does (True, None)
        forms = {json.dumps(piece), str(piece)}
    return any(f in text for f in forms)
