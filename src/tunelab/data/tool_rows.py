"""OpenAI-style tool use in rows: `tool_calls` on assistant messages, `tool` results, a `tools` list.

Parsed strictly. A call without a name, arguments that are not a JSON object, a tool result with no call
before it, or a call to a function the row's `tools` do not offer is a FieldError naming the field: tool
data that is half understood would train the model on something other than what the user wrote.

Accepted shapes (docs/data.md): a call is `{id?, type: "function", function: {name, arguments}}` with
`arguments` an object or its JSON text (OpenAI writes text); a tool schema is OpenAI's
`{type: "function", function: {name, description?, parameters?}}`, or the bare `{name, ...}` that
LLaMA-Factory's sharegpt files use (wrapped into OpenAI's shape, which chat templates read); `tools` may be
the list or its JSON text. Sharegpt `function_call` turns hold `{name, arguments}` (or a list of them) as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tunelab.data.fields import FieldError, got
from tunelab.data.records import Message, ToolCall

CALL_SHAPE = '{"id"?, "type": "function", "function": {"name", "arguments"}}'
TOOL_SHAPE = '{"type": "function", "function": {"name", "description"?, "parameters"?}}'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json(text: str, field: str, what: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise FieldError(field, f"{what} is not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # NaN / Infinity
        raise FieldError(field, f"{what} is not valid JSON ({e})") from None


def tool_calls(value: Any, field: str) -> tuple[ToolCall, ...]:
    """An assistant message's `tool_calls` list."""
    if not isinstance(value, list) or not value:
        raise FieldError(field, f"expected a non-empty list of calls {CALL_SHAPE}, {got(value)}")
    return tuple(_call(item, f"{field}[{i}]") for i, item in enumerate(value))


def _call(item: Any, field: str) -> ToolCall:
    if not isinstance(item, dict):
        raise FieldError(field, f"expected a call {CALL_SHAPE}, {got(item)}")
    if item.get("type", "function") != "function":
        raise FieldError(f"{field}.type", f"expected 'function', got {item['type']!r}")
    fn = item.get("function")
    if not isinstance(fn, dict):
        raise FieldError(f"{field}.function", f"expected an object {{name, arguments}}, {got(fn)}")
    call_id = item.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise FieldError(f"{field}.id", f"expected a string, {got(call_id)}")
    return ToolCall(_name(fn, f"{field}.function"), _arguments(fn, f"{field}.function"), call_id)


def _name(fn: dict[str, Any], field: str) -> str:
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise FieldError(f"{field}.name", f"expected the function name as a non-empty string, got {name!r}")
    return name


def _arguments(fn: dict[str, Any], field: str) -> str:
    if "arguments" not in fn or fn["arguments"] is None:
        raise FieldError(f"{field}.arguments", "missing; expected the arguments as a JSON object ({} for none)")
    value = fn["arguments"]
    if isinstance(value, str):
        value = _json(value, f"{field}.arguments", "the arguments text")
    if not isinstance(value, dict):
        raise FieldError(f"{field}.arguments", f"expected a JSON object of arguments, {got(value)}")
    return json.dumps(value, ensure_ascii=False)


def sharegpt_calls(value: Any, field: str) -> tuple[ToolCall, ...]:
    """A sharegpt `function_call` turn's value: JSON text of {name, arguments} or a list of them."""
    parsed = _json(value, field, "the function_call value") if isinstance(value, str) else value
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items or not all(isinstance(x, dict) for x in items):
        raise FieldError(field, 'expected {"name", "arguments"} (or a list of them) as JSON')
    return tuple(ToolCall(_name(x, f"{field}[{i}]"), _arguments(x, f"{field}[{i}]")) for i, x in enumerate(items))


def tools(value: Any, field: str = "tools") -> tuple[str, ...]:
    """A row's `tools`: the JSON text of each schema, in OpenAI's shape; () when there are none."""
    if value is None:
        return ()
    if isinstance(value, str):  # LLaMA-Factory keeps tools as JSON text
        value = _json(value, field, "the tools text") if value.strip() else []
    if not isinstance(value, list):
        raise FieldError(field, f"expected a list of function schemas {TOOL_SHAPE}, {got(value)}")
    out, seen = [], set()
    for i, schema in enumerate(value):
        tool = _schema(schema, f"{field}[{i}]")
        name = tool["function"]["name"]
        if name in seen:
            raise FieldError(f"{field}[{i}].function.name", f"function {name!r} is listed twice")
        seen.add(name)
        out.append(json.dumps(tool, ensure_ascii=False))
    return tuple(out)


def _schema(schema: Any, field: str) -> dict[str, Any]:
    if isinstance(schema, dict) and "function" not in schema and "name" in schema:
        schema = {"type": "function", "function": schema}  # bare schema (LLaMA-Factory)
    if not isinstance(schema, dict) or schema.get("type") != "function" or not isinstance(schema.get("function"), dict):
        raise FieldError(field, f"expected a function schema {TOOL_SHAPE}")
    _name(schema["function"], f"{field}.function")
    params = schema["function"].get("parameters")
    if params is not None and not isinstance(params, dict):
        raise FieldError(f"{field}.function.parameters", f"expected a JSON schema object, {got(params)}")
    return schema


def tool_names(schemas: Sequence[str]) -> list[str]:
    return [json.loads(t)["function"]["name"] for t in schemas]


def check_sequence(msgs: Sequence[Message], field: str, offered: Sequence[str] = (), offset: int = 0) -> None:
    """Tool results follow the call they answer; calls name offered functions (when `tools` are given).
    `msgs[offset:]` are the messages of `field` (those before are context already checked, e.g. a prompt)."""
    names = tool_names(offered)
    calls: tuple[ToolCall, ...] = ()  # the calls a tool result may answer now
    for i, m in enumerate(msgs):
        where = f"{field}[{i - offset}]"
        if m.role == "assistant":
            calls = m.tool_calls
            bad = next((j for j, c in enumerate(calls) if names and c.name not in names), None)
            if i >= offset and bad is not None:
                raise FieldError(f"{where}.tool_calls[{bad}].function.name", f"calls {calls[bad].name!r}, which "
                                 f"the row's tools do not offer (offered: {', '.join(names)})")  # fmt: skip
        elif m.role == "tool" and i >= offset:
            _check_result(m, calls, where)
        elif m.role != "tool":
            calls = ()  # a user or system turn closes the calls before it


def _check_result(m: Message, calls: tuple[ToolCall, ...], where: str) -> None:
    if not calls:
        raise FieldError(where, "a tool result must follow an assistant message whose tool_calls it answers; "
                         "write the call in that message's tool_calls")  # fmt: skip
    ids = [c.id for c in calls if c.id]
    if m.tool_call_id and ids and m.tool_call_id not in ids:
        raise FieldError(f"{where}.tool_call_id", f"{m.tool_call_id!r} answers none of the calls before it "
                         f"(their ids: {', '.join(ids)})")  # fmt: skip
