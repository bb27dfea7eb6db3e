"""Each format: row -> record, against hand-written expectations; bad rows name the field."""

import pytest

from tunelab.data.formats import FORMATS, FieldError, detect_format, rename_columns
from tunelab.data.records import (
    Conversation,
    Message,
    Preference,
    Prompt,
    PromptCompletion,
    Text,
    ToolCall,
    UnpairedPreference,
)

U, A, S = "user", "assistant", "system"


def test_alpaca_with_input_system_and_history():
    row = {"instruction": "Add", "input": "2+2", "output": "4", "system": "Be brief.", "history": [["hi", "hello"]]}
    assert FORMATS["alpaca"](row) == Conversation(
        (Message(S, "Be brief."), Message(U, "hi"), Message(A, "hello"), Message(U, "Add\n\n2+2"), Message(A, "4"))
    )


def test_alpaca_empty_input_is_just_the_instruction():
    assert FORMATS["alpaca"]({"instruction": "Hi", "input": "", "output": "Yo"}).messages[0] == Message(U, "Hi")


def test_messages_with_tool_role_weight_and_text_parts():
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    row = {"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "x", "weight": 0, "tool_calls": [call]}, {"role": "tool", "content": "t"},
        {"role": "assistant", "content": "y"}]}  # fmt: skip
    rec = FORMATS["messages"](row)
    assert rec.messages == (
        Message(S, "s"),
        Message(U, "ab"),
        Message(A, "x", 0.0, (ToolCall("f", "{}"),)),
        Message("tool", "t"),
        Message(A, "y"),
    )


def test_sharegpt_maps_roles_and_system():
    row = {"system": "sys", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert FORMATS["sharegpt"](row) == Conversation((Message(S, "sys"), Message(U, "q"), Message(A, "a")))


def test_prompt_completion_plain_and_conversational():
    assert FORMATS["prompt_completion"]({"prompt": "p", "completion": "c"}) == PromptCompletion("p", "c")
    conv = FORMATS["prompt_completion"](
        {"prompt": [{"role": "user", "content": "p"}], "completion": [{"role": "assistant", "content": "c"}]}
    )
    assert conv == Conversation((Message(U, "p"), Message(A, "c")))


def test_text():
    assert FORMATS["text"]({"text": "once upon"}) == Text("once upon")


def test_preference_styles():
    plain = FORMATS["preference"]({"prompt": "p", "chosen": "good", "rejected": "bad"})
    assert plain == Preference((Message(U, "p"),), (Message(A, "good"),), (Message(A, "bad"),))
    sharegpt = FORMATS["preference"]({"conversations": [{"from": "human", "value": "p"}],
                                      "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}})  # fmt: skip
    assert sharegpt == plain
    openai = FORMATS["preference"]({"input": {"messages": [{"role": "user", "content": "p"}]},
                                    "preferred_output": [{"role": "assistant", "content": "good"}],
                                    "non_preferred_output": [{"role": "assistant", "content": "bad"}]})  # fmt: skip
    assert openai == plain


def test_kto_from_messages_and_prompt_completion():
    rec = FORMATS["kto"](
        {"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}], "label": False}
    )
    assert rec == UnpairedPreference((Message(U, "p"),), (Message(A, "c"),), False)
    assert FORMATS["kto"]({"prompt": "p", "completion": "c", "label": True}).label is True


def test_prompt_string_or_messages_other_fields_unread():
    assert FORMATS["prompt"]({"prompt": "p", "answer": "ignored"}) == Prompt((Message(U, "p"),))
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert FORMATS["prompt"]({"prompt": msgs}) == Prompt((Message(S, "s"), Message(U, "q")))


@pytest.mark.parametrize(
    ("fmt", "row", "field", "expected"),
    [
        ("alpaca", {"instruction": "x"}, "output", "missing required field"),
        ("alpaca", {"instruction": 3, "output": "y"}, "instruction", "expected a string, got a number"),
        ("messages", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "unknown role 'robot'"),
        ("messages", {"messages": [{"role": "user", "content": "x"}]}, "messages", "no assistant turn"),
        ("messages", {"messages": "hi"}, "messages", "expected a list"),
        (
            "messages",
            {"messages": [{"role": "assistant", "content": "x", "weight": 0.5}]},
            "messages[0].weight",
            "expected 0 or 1",
        ),
        ("sharegpt", {"conversations": [{"from": "alien", "value": "x"}]}, "conversations[0].from", "unknown role"),
        ("kto", {"prompt": "p", "completion": "c", "label": "yes"}, "label", "expected true/false"),
        ("prompt", {"question": "q"}, "prompt", "missing required field"),
        ("prompt", {"prompt": 3}, "prompt", "expected a string or a list, got a number"),
        ("prompt", {"prompt": [{"role": "assistant", "content": "a"}]}, "prompt", "ends where the model answers"),
    ],
)
def test_bad_rows_name_the_field(fmt, row, field, expected):
    with pytest.raises(FieldError) as e:
        FORMATS[fmt](row)
    assert e.value.field == field
    assert expected in str(e.value)


def test_detect_format():
    assert detect_format({"instruction", "input", "output"}) == "alpaca"
    assert detect_format({"messages"}) == "messages"
    assert detect_format({"messages", "label"}) == "kto"
    assert detect_format({"conversations", "chosen", "rejected"}) == "preference"
    assert detect_format({"conversations"}) == "sharegpt"
    assert detect_format({"prompt", "completion"}) == "prompt_completion"
    assert detect_format({"text"}) == "text"
    assert detect_format({"prompt"}) == "prompt"
    assert detect_format({"prompt", "id"}) == "prompt"
    assert detect_format({"foo"}) is None


def test_columns_mapping_renames_and_reports_missing_column():
    row = {"question": "q", "answer": "a", "id": 1}
    assert rename_columns(row, {"instruction": "question", "output": "answer"}) == {
        "id": 1,
        "instruction": "q",
        "output": "a",
    }
    with pytest.raises(FieldError) as e:
        rename_columns(row, {"instruction": "prompt_text"})
    assert e.value.field == "prompt_text" and "not found" in str(e.value) and "question" in str(e.value)
