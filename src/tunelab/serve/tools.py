"""Tool calls: parse them out of generated text, and build the grammar that forces one (`tool_choice`).

The format is the one tunelab's ChatML template renders (the Hermes/Qwen convention, see
`tunelab.models.presets` and `tunelab.data.tokenize.TOOL_CALLS_JINJA`): after the assistant's content,
each call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. A model fine-tuned on that
data writes its calls the same way, so the server reads them back into OpenAI `tool_calls`.

Parsing is strict: a block becomes a tool call only when its body is a JSON object whose `name` is one of
the offered functions and whose `arguments` is an object (or JSON text of one). Anything else stays in the
message content, as written, so nothing the model said is dropped. The final `</tool_call>` may be
missing when the model stopped right after the JSON (EOS or max_tokens).

`tool_choice`: "none" -> no parsing (and the caller should not render the tools); "auto" -> parse,
unconstrained; "required" -> constrained to one or more calls of any offered function; a named function ->
constrained to exactly one call of it. The constraint is a Lark grammar with llguidance's `%json`
(see constrain.py), so the arguments follow the function's JSON schema.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tunelab.errors import TunelabError
from tunelab.serve.constrain import JSON_OPTIONS, Constraint

TOOL_START, TOOL_END = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(TOOL_START) + r"(.*?)(?:" + re.escape(TOOL_END) + r"|\Z)", re.S)


def parse_tool_calls(text: str, names: tuple[str, ...] | list[str]) -> tuple[str, list[dict[str, Any]]]:
    """(content without the parsed call blocks, OpenAI-shaped tool_calls) from generated text."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    pos = 0
    for m in _BLOCK.finditer(text):
        call = _call(m.group(1), names)
        if call is None:
            continue  # not a call we can read: stays in the content
        kept.append(text[pos : m.start()])
        pos = m.end()
        calls.append(call)
    kept.append(text[pos:])
    content = "".join(kept)
    return (content.rstrip() if calls else content), calls


def _call(body: str, names: tuple[str, ...] | list[str]) -> dict[str, Any] | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)},
    }


def tool_names(tools: list[dict[str, Any]] | None) -> tuple[str, ...]:
    """Function names of OpenAI `tools` ([{type: function, function: {name, parameters}}])."""
    return tuple(_function(t)["name"] for t in tools or [])


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    f = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise TunelabError("tools: each tool must be {type: function, function: {name, parameters?}}")
    return f


def tool_choice_constraint(
    tools: list[dict[str, Any]] | None, tool_choice: Any, parallel: bool = True
) -> Constraint | None:
    """The grammar `tool_choice` asks for: None for "auto"/"none"/absent; one call of the named function;
    one or more calls for "required" (exactly one when `parallel` is False: `parallel_tool_calls: false`)."""
    if tool_choice in (None, "auto", "none"):
        return None
    funcs = [_function(t) for t in tools or []]
    if not funcs:
        raise TunelabError("tool_choice: requires `tools`")
    if tool_choice == "required":
        call = _call_schema(funcs)
        more = ' ("\\n" call)*' if parallel else ""
        return Constraint("lark", f"start: call{more}\ncall: {_tags()}\nbody: %json {json.dumps(call)}")
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    chosen = [f for f in funcs if f["name"] == name]
    if not chosen:
        raise TunelabError(f"tool_choice: {tool_choice!r} names no function in `tools`")
    return Constraint("lark", f"start: {_tags()}\nbody: %json {json.dumps(_call_schema(chosen))}")


def _tags() -> str:
    return json.dumps(TOOL_START + "\n") + " body " + json.dumps("\n" + TOOL_END)


def _call_schema(funcs: list[dict[str, Any]]) -> dict[str, Any]:
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in funcs
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": JSON_OPTIONS}  # the same JSON layout as JSON mode
