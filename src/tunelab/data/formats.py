"""Data formats: each a pure function `row dict -> Record`.

A format raises `FieldError(field, expected)` for a bad row; the pipeline adds the file and line. The
`columns:` mapping renames the user's fields to the format's names before the format sees the row, so
custom field names need no code; a mapping value with `{field}` in it is a template over several fields
(`{text: "{title}. {description}"}`). `detect_format` picks a format from a row's keys.

| format            | fields                                                                  | record             |
|-------------------|-------------------------------------------------------------------------|--------------------|
| alpaca            | instruction, input?, output, system?, history? [[user, assistant], ...] | Conversation       |
| messages          | messages [{role, content, weight?, tool_calls?, tool_call_id?}], tools? | Conversation       |
| sharegpt          | conversations [{from, value}], system?, tools?                          | Conversation       |
| prompt_completion | prompt, completion (strings, or message lists)                          | PromptCompletion / Conversation |
| text              | text                                                                    | Text               |
| preference        | prompt?, chosen, rejected (strings, messages, or sharegpt {from, value});
|                   | or OpenAI: input.messages, preferred_output, non_preferred_output       | Preference         |
| transcript        | chosen, rejected: whole "\n\nHuman: ...\n\nAssistant: ..." dialogues   | Preference         |
| kto               | messages + label, or prompt + completion + label                        | UnpairedPreference |
| prompt            | prompt (a string or messages); other fields are not read; tools refused | Prompt             |
| labelled          | text, label (a string, number or true/false; kept as its string)        | Labelled           |
| token_tags        | tokens [str], tags [str] (or ner_tags): strict BIO, one tag per token    | TokenTags          |

Tool use (tool_calls, tool results, tools) is parsed by `tool_rows`; formats that cannot carry it refuse a
`tools` field instead of ignoring it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from string import Formatter
from typing import Any

from tunelab.data import tool_rows
from tunelab.data.fields import FieldError, json_name
from tunelab.data.records import (
    ROLES,
    Conversation,
    Labelled,
    Message,
    Preference,
    Prompt,
    PromptCompletion,
    Record,
    Text,
    TokenTags,
    ToolCall,
    UnpairedPreference,
)
from tunelab.data.transcript import is_transcript, transcript

SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bing": "assistant", "system": "system", "observation": "tool", "tool": "tool", "function": "tool",
    "function_call": "assistant",
}  # fmt: skip


# --------------------------------------------------------------------------- field helpers


def _get(row: Mapping[str, Any], field: str, kind: type | tuple[type, ...] = str, required: bool = True) -> Any:
    if field not in row or row[field] is None:
        if required:
            raise FieldError(field, f"missing required field (fields present: {', '.join(map(str, row)) or 'none'})")
        return None
    value = row[field]
    if not isinstance(value, kind):
        names = " or ".join(json_name(k.__name__) for k in ((kind,) if isinstance(kind, type) else kind))
        raise FieldError(field, f"expected {names}, got {json_name(type(value).__name__)}")
    return value


def _content(value: Any, field: str) -> str:
    """Message content: a string, or OpenAI-style parts [{type: text, text}] joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise FieldError(field, f"expected a string (or a list of text parts), got {json_name(type(value).__name__)}")


def _message(item: Any, field: str, role_key: str = "role", content_key: str = "content") -> Message:
    if not isinstance(item, dict):
        raise FieldError(
            field,
            f"expected an object with {role_key!r} and {content_key!r}, got {json_name(type(item).__name__)}",
        )
    raw_role = item.get(role_key)
    if role_key == "from":
        role = SHAREGPT_ROLES.get(str(raw_role).lower()) if raw_role is not None else None
        allowed = ", ".join(SHAREGPT_ROLES)
    else:
        role = raw_role if raw_role in ROLES else None
        allowed = ", ".join(ROLES)
    if role is None:
        raise FieldError(f"{field}.{role_key}", f"unknown role {raw_role!r}; expected one of: {allowed}")
    if role_key == "from" and str(raw_role).lower() == "function_call":  # sharegpt: the value is the call
        calls = tool_rows.sharegpt_calls(item.get(content_key), f"{field}.{content_key}")
        return Message(role, "", _weight(item, field), tool_calls=calls)
    calls = _calls(item, role, field)
    if content_key not in item or item[content_key] is None:
        if not calls:
            need = " (an assistant message needs content or tool_calls)" if role == "assistant" else ""
            raise FieldError(f"{field}.{content_key}", "missing message content" + need)
        return Message(role, "", _weight(item, field), tool_calls=calls)
    text_ = _content(item[content_key], f"{field}.{content_key}")
    return Message(role, text_, _weight(item, field), calls, *_result_of(item, role, field))


def _calls(item: dict[str, Any], role: str, field: str) -> tuple[ToolCall, ...]:
    if item.get("function_call") is not None:
        raise FieldError(f"{field}.function_call", "the legacy OpenAI function_call is not read; write it as "
                         f"tool_calls: [{tool_rows.CALL_SHAPE}]")  # fmt: skip
    if item.get("tool_calls") is None:
        return ()
    if role != "assistant":
        raise FieldError(f"{field}.tool_calls", f"only assistant messages make tool calls; this one is {role!r}")
    return tool_rows.tool_calls(item["tool_calls"], f"{field}.tool_calls")


def _result_of(item: dict[str, Any], role: str, field: str) -> tuple[str | None, str | None]:
    """(tool_call_id, name) of a tool result."""
    if role != "tool":
        if item.get("tool_call_id") is not None:
            raise FieldError(f"{field}.tool_call_id", f"only tool messages answer a call; this one is {role!r}")
        return None, None
    for key in ("tool_call_id", "name"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise FieldError(f"{field}.{key}", f"expected a string, got {json_name(type(item[key]).__name__)}")
    return item.get("tool_call_id"), item.get("name")


def _weight(item: dict[str, Any], field: str) -> float | None:
    w = item.get("weight")
    if w is None:
        return None
    if w not in (0, 1):
        raise FieldError(f"{field}.weight", f"expected 0 or 1, got {w!r}")
    if item.get("role", item.get("from")) not in ("assistant", "gpt"):
        raise FieldError(f"{field}.weight", "weight is only meaningful on assistant messages")
    return float(w)


def _messages(
    value: Any,
    field: str,
    role_key: str = "role",
    content_key: str = "content",
    context: tuple[Message, ...] = (),
    tools: tuple[str, ...] = (),
) -> tuple[Message, ...]:
    """A message list; `context` is what comes before it in the conversation (a prompt before its reply)."""
    if not isinstance(value, list) or not value:
        raise FieldError(field, "expected a non-empty list of messages")
    msgs = tuple(_message(m, f"{field}[{i}]", role_key, content_key) for i, m in enumerate(value))
    tool_rows.check_sequence(context + msgs, field, tools, offset=len(context))
    return msgs


def _require_assistant(messages: tuple[Message, ...], field: str, tools: tuple[str, ...] = ()) -> Conversation:
    if not any(m.role == "assistant" for m in messages):
        raise FieldError(field, "conversation has no assistant turn, so nothing would be trained")
    return Conversation(messages, tools)


def _tools(row: Mapping[str, Any], field: str = "tools") -> tuple[str, ...]:
    return tool_rows.tools(row.get(field), field)


def _no_tools(row: Mapping[str, Any], why: str) -> None:
    """Formats that cannot carry tools refuse them rather than drop them."""
    if row.get("tools") is not None:
        raise FieldError("tools", f"tools are not read here: {why}")


# --------------------------------------------------------------------------- formats


def alpaca(row: Mapping[str, Any]) -> Conversation:
    _no_tools(row, "write tool-use conversations in the messages format")
    instruction = _get(row, "instruction")
    extra = _get(row, "input", required=False) or ""
    output = _get(row, "output")
    msgs: list[Message] = []
    if system := _get(row, "system", required=False):
        msgs.append(Message("system", system))
    for i, pair in enumerate(_get(row, "history", list, required=False) or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise FieldError(f"history[{i}]", "expected a [user, assistant] pair of strings")
        msgs += [Message("user", pair[0]), Message("assistant", pair[1])]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return Conversation((*msgs, Message("user", user), Message("assistant", output)))


def messages(row: Mapping[str, Any]) -> Conversation:
    tools = _tools(row)
    return _require_assistant(_messages(_get(row, "messages", list), "messages", tools=tools), "messages", tools)


def sharegpt(row: Mapping[str, Any]) -> Conversation:
    tools = _tools(row)
    msgs = _messages(_get(row, "conversations", list), "conversations", "from", "value", tools=tools)
    if (system := _get(row, "system", required=False)) and msgs[0].role != "system":
        msgs = (Message("system", system), *msgs)
    return _require_assistant(msgs, "conversations", tools)


def prompt_completion(row: Mapping[str, Any]) -> PromptCompletion | Conversation:
    prompt, completion = _get(row, "prompt", (str, list)), _get(row, "completion", (str, list))
    if isinstance(prompt, str) and isinstance(completion, str):
        _no_tools(row, "tool use needs a conversation; give prompt and completion as message lists")
        return PromptCompletion(prompt, completion)
    # Conversational prompt/completion (TRL style): message lists on both sides.
    tools = _tools(row)
    p = _messages(prompt, "prompt", tools=tools) if isinstance(prompt, list) else (Message("user", prompt),)
    c = (_messages(completion, "completion", context=p, tools=tools) if isinstance(completion, list)
         else (Message("assistant", completion),))  # fmt: skip
    return _require_assistant(p + c, "completion", tools)


def text(row: Mapping[str, Any]) -> Text:
    return Text(_get(row, "text"))


def _reply(
    value: Any, field: str, context: tuple[Message, ...] = (), tools: tuple[str, ...] = ()
) -> tuple[Message, ...]:
    """A preference side: a string, a message list, or a sharegpt {from, value} object, after `context`."""
    if isinstance(value, str):
        return (Message("assistant", value),)
    if isinstance(value, dict):
        msgs = (_message(value, field, "from", "value") if "from" in value else _message(value, field),)
        tool_rows.check_sequence(context + msgs, field, tools, offset=len(context))
        return msgs
    if isinstance(value, list):
        return _messages(value, field, context=context, tools=tools)
    raise FieldError(
        field, f"expected a string, a message or a list of messages, got {json_name(type(value).__name__)}"
    )


def _prompt(value: Any, field: str, tools: tuple[str, ...] = ()) -> tuple[Message, ...]:
    if isinstance(value, str):
        return (Message("user", value),)
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
        return _messages(value, field, "from", "value", tools=tools)
    return _messages(value, field, tools=tools)


def preference(row: Mapping[str, Any]) -> Preference:
    if "preferred_output" in row:  # OpenAI preference fine-tuning JSONL
        inp = _get(row, "input", dict)
        tools = tool_rows.tools(inp.get("tools"), "input.tools")
        prompt = _messages(inp.get("messages"), "input.messages", tools=tools)
        chosen = _reply(_get(row, "preferred_output", list), "preferred_output", prompt, tools)
        rejected = _reply(_get(row, "non_preferred_output", list), "non_preferred_output", prompt, tools)
        return Preference(prompt, chosen, rejected, tools)
    if "prompt" not in row and "conversations" not in row and is_transcript(row.get("chosen")):
        return transcript(row)  # Human:/Assistant: dialogues: the shared part is the prompt
    tools = _tools(row)
    if "conversations" in row:  # sharegpt style
        prompt = _messages(_get(row, "conversations", list), "conversations", "from", "value", tools=tools)
    else:
        prompt = _prompt(_get(row, "prompt", (str, list)), "prompt", tools)
    return Preference(prompt, _reply(_get(row, "chosen", (str, list, dict)), "chosen", prompt, tools),
                      _reply(_get(row, "rejected", (str, list, dict)), "rejected", prompt, tools), tools)  # fmt: skip


def kto(row: Mapping[str, Any]) -> UnpairedPreference:
    label = _get(row, "label", (bool, int, str))
    if isinstance(label, str) or label not in (True, False, 0, 1):
        raise FieldError("label", f"expected true/false, got {label!r}")
    tools = _tools(row)
    if "messages" in row:
        msgs = _messages(_get(row, "messages", list), "messages", tools=tools)
        if msgs[-1].role != "assistant":
            raise FieldError("messages", "the last message must be the assistant completion being labelled")
        return UnpairedPreference(msgs[:-1], msgs[-1:], bool(label), tools)
    prompt = _prompt(_get(row, "prompt", (str, list)), "prompt", tools)
    completion = _reply(_get(row, "completion", (str, list, dict)), "completion", prompt, tools)
    return UnpairedPreference(prompt, completion, bool(label), tools)


def prompt(row: Mapping[str, Any]) -> Prompt:
    """Prompt-only data for online RL: the model writes (and is scored on) its own answers."""
    _no_tools(row, "online RL (grpo) prompts with tools are not supported yet")
    msgs = _prompt(_get(row, "prompt", (str, list)), "prompt")
    if msgs[-1].role == "assistant":
        raise FieldError("prompt", "the last message is an assistant turn; a prompt ends where the model answers")
    return Prompt(msgs)


def labelled(row: Mapping[str, Any]) -> Labelled:
    text_, label = _get(row, "text"), _get(row, "label", (str, int, float, bool))
    if isinstance(label, float):  # 1.0 and 1 would be two classes
        raise FieldError("label", f"expected a string or a whole number, got {label!r}")
    if not text_.strip():
        raise FieldError("text", "expected a non-empty text")
    if isinstance(label, str) and not label.strip():
        raise FieldError("label", "expected a non-empty label")
    return Labelled(text_, str(label).lower() if isinstance(label, bool) else str(label))


def token_tags(row: Mapping[str, Any]) -> TokenTags:
    """Strict BIO (IOB2): an entity starts with B-TYPE; I-TYPE only continues a B-/I- of the same TYPE.
    Invalid sequences are errors, not repaired: a silent repair would change what the model learns."""
    field = "tags" if "tags" in row else "ner_tags" if "ner_tags" in row else "tags"
    tokens, tags = _get(row, "tokens", list), _get(row, field, list)
    if not tokens:
        raise FieldError("tokens", "expected a non-empty list of tokens")
    for name, values in (("tokens", tokens), (field, tags)):
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
        if bad is not None:
            raise FieldError(name, f"position {bad}: expected a non-empty string, got {values[bad]!r}"
                             + (" (map tag ids to names first)" if name == field else ""))  # fmt: skip
    if len(tags) != len(tokens):
        raise FieldError(field, f"{len(tags)} tags for {len(tokens)} tokens; expected one tag per token")
    for i, tag in enumerate(tags):
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise FieldError(field, f"position {i}: tag {tag!r} is not BIO; expected O, B-TYPE or I-TYPE")
        prev = tags[i - 1] if i else "O"
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            after = f"follows {prev}" if i else "opens the sentence"
            raise FieldError(field, f"position {i}: {tag} {after}; an entity starts with B-{tag[2:]} (strict BIO)")
    return TokenTags(tuple(tokens), tuple(tags))


FORMATS: dict[str, Callable[[Mapping[str, Any]], Record]] = {
    "alpaca": alpaca,
    "messages": messages,
    "sharegpt": sharegpt,
    "prompt_completion": prompt_completion,
    "text": text,
    "preference": preference,
    "transcript": transcript,
    "kto": kto,
    "prompt": prompt,
    "labelled": labelled,
    "token_tags": token_tags,
}


# The top-level fields each format reads as text: what a model trains on (PII scans, trimming and redaction act
# on these, through a `columns:` mapping, and never on ids or other columns the format does not read).
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system", "history"), "messages": ("messages",),
    "sharegpt": ("conversations", "system"), "prompt_completion": ("prompt", "completion"), "text": ("text",),
    "preference": ("prompt", "chosen", "rejected", "conversations", "input", "preferred_output", "non_preferred_output"),
    "transcript": ("chosen", "rejected"), "kto": ("messages", "prompt", "completion"), "prompt": ("prompt",),
    "labelled": ("text",), "token_tags": ("tokens",),
}  # fmt: skip


def text_sources(fmt: str, columns: Mapping[str, str] | None) -> set[str]:
    """The user's top-level fields that `fmt` reads as text, after the `columns:` mapping (templates: every field
    they name)."""
    out: set[str] = set()
    for name in TEXT_FIELDS.get(fmt, ()):
        source = (columns or {}).get(name, name)
        out |= set(template_fields(source)) if is_template(source) else {source}
    return out


def detect_format(keys: set[str]) -> str | None:
    """Guess a format from the fields of the first row; None when nothing fits."""
    if {"chosen", "rejected"} <= keys or "preferred_output" in keys:
        return "preference"
    if "label" in keys and ("messages" in keys or {"prompt", "completion"} <= keys):
        return "kto"
    if "tokens" in keys and ("tags" in keys or "ner_tags" in keys):
        return "token_tags"
    for fmt, needed in (("messages", {"messages"}), ("sharegpt", {"conversations"}), ("alpaca", {"instruction", "output"}),
                        ("prompt_completion", {"prompt", "completion"}), ("text", {"text"}), ("prompt", {"prompt"})):  # fmt: skip
        if needed <= keys:
            return fmt
    return None


def rename_columns(row: Mapping[str, Any], columns: Mapping[str, str] | None) -> dict[str, Any]:
    """Apply a `columns:` mapping {format_field: user_field or template}; a missing user column is an error."""
    if not columns:
        return dict(row)
    out = {k: v for k, v in row.items() if k not in columns.values()}
    for target, source in columns.items():
        if is_template(source):
            out[target] = fill_template(source, row, target)
            continue
        if source not in row:
            raise FieldError(source, f"column {source!r} (mapped to {target!r} in columns:) not found; "
                             f"the record has: {', '.join(map(str, row))}")  # fmt: skip
        out[target] = row[source]
    return out


def is_template(source: str) -> bool:
    return "{" in source


def template_fields(template: str) -> list[str]:
    """The field names a `columns:` template reads, in order ("{title}. {description}" -> title, description)."""
    try:
        return [name for _, name, _, _ in Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise FieldError(
            "columns", f"bad template {template!r}: {e} (write {{{{ and }}}} for literal braces)"
        ) from None


def fill_template(template: str, row: Mapping[str, Any], target: str) -> str:
    """The template with each {field} replaced by that field's value (numbers as written, a format spec such as
    {score:.1f} applied); a missing or null field, or a {field.attr}/{field[0]} lookup, is an error."""
    out = []
    for literal, name, spec, conv in Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if not name or not name.replace("_", "").replace("-", "").replace(" ", "").isalnum() or conv:
            raise FieldError("columns", f"template for {target!r}: {{{name}}} is not a plain field name")
        if row.get(name) is None:
            what = "is null" if name in row else f"not found; the record has: {', '.join(map(str, row))}"
            raise FieldError(name, f"column {name!r} (in the template for {target!r} in columns:) {what}")
        out.append(format(row[name], spec) if spec else str(row[name]))
    return "".join(out)
