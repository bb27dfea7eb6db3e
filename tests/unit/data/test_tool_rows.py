"""Tool use in rows -> records: OpenAI messages, LLaMA-Factory sharegpt, preference; bad tool rows name the field."""

import json

import pytest

from tunelab.config import load_config
from tunelab.data.formats import FORMATS, FieldError
from tunelab.data.pipeline import load_records
from tunelab.data.records import Conversation, Message, Preference, ToolCall
from tunelab.errors import DataError

U, A = "user", "assistant"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def call(name="get_weather", arguments='{"city": "Paris"}', **extra):
    return {**extra, "type": "function", "function": {"name": name, "arguments": arguments}}


def openai_row(**over):
    row = {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call(id="call_1")]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
            {"role": "assistant", "content": "18 C."},
        ],
    }
    return {**row, **over}


EXPECTED = Conversation(
    (
        Message(U, "Weather in Paris?"),
        Message(A, "", tool_calls=(ToolCall("get_weather", '{"city": "Paris"}', "call_1"),)),
        Message("tool", '{"temp_c": 18}', tool_call_id="call_1"),
        Message(A, "18 C."),
    ),
    (json.dumps(WEATHER),),
)


def test_openai_tool_call_row_keeps_the_call_the_result_and_the_tools():
    assert FORMATS["messages"](openai_row()) == EXPECTED


def test_arguments_as_an_object_or_as_json_text_are_the_same_call():
    row = openai_row()
    row["messages"][1]["tool_calls"] = [call(id="call_1", arguments={"city": "Paris"})]
    assert FORMATS["messages"](row) == EXPECTED


def test_sharegpt_function_call_and_observation_with_tools_as_json_text():
    # LLaMA-Factory's sharegpt tool data: tools as JSON text of bare schemas, calls as JSON values.
    row = {
        "tools": json.dumps([WEATHER["function"]]),
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp_c": 18}'},
            {"from": "gpt", "value": "18 C."},
        ],
    }
    rec = FORMATS["sharegpt"](row)
    assert rec.tools == EXPECTED.tools  # the bare schema is wrapped into OpenAI's shape
    assert rec.messages[1] == Message(A, "", tool_calls=(ToolCall("get_weather", '{"city": "Paris"}'),))
    assert rec.messages[2] == Message("tool", '{"temp_c": 18}')


def test_preference_and_kto_keep_tools_and_calls():
    row = {
        "input": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]},
        "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call()]}],
        "non_preferred_output": [{"role": "assistant", "content": "I cannot know."}],
    }
    rec = FORMATS["preference"](row)
    assert rec == Preference(
        (Message(U, "Weather in Paris?"),),
        (Message(A, "", tool_calls=(ToolCall("get_weather", '{"city": "Paris"}'),)),),
        (Message(A, "I cannot know."),),
        EXPECTED.tools,
    )
    kto = FORMATS["kto"]({"messages": openai_row()["messages"][:2], "tools": [WEATHER], "label": True})
    assert kto.tools == EXPECTED.tools and kto.completion[0].tool_calls[0].name == "get_weather"


def msgs_with(i, **changes):
    row = openai_row()
    row["messages"][i] = {k: v for k, v in {**row["messages"][i], **changes}.items() if v is not ...}
    return row


@pytest.mark.parametrize(
    ("row", "field", "expected"),
    [
        (msgs_with(1, tool_calls=[call(name="")]), "messages[1].tool_calls[0].function.name", "non-empty string"),
        (msgs_with(1, tool_calls=[{"type": "function", "function": {"arguments": "{}"}}]),
         "messages[1].tool_calls[0].function.name", "expected the function name"),
        (msgs_with(1, tool_calls=[call(arguments="{city: Paris}")]), "messages[1].tool_calls[0].function.arguments",
         "not valid JSON"),
        (msgs_with(1, tool_calls=[call(arguments='{"x": NaN}')]), "messages[1].tool_calls[0].function.arguments",
         "not valid JSON"),
        (msgs_with(1, tool_calls=[call(arguments="[1, 2]")]), "messages[1].tool_calls[0].function.arguments",
         "expected a JSON object of arguments, got a list"),
        (msgs_with(1, tool_calls=[{"type": "function", "function": {"name": "get_weather"}}]),
         "messages[1].tool_calls[0].function.arguments", "missing"),
        (msgs_with(1, tool_calls=[{"type": "code", "function": {}}]), "messages[1].tool_calls[0].type",
         "expected 'function'"),
        (msgs_with(1, tool_calls=[]), "messages[1].tool_calls", "non-empty list"),
        (msgs_with(1, tool_calls=[call(name="get_time")]), "messages[1].tool_calls[0].function.name",
         "'get_time', which the row's tools do not offer (offered: get_weather)"),
        (msgs_with(1, tool_calls=..., content=None), "messages[1].content", "needs content or tool_calls"),
        (msgs_with(1, tool_calls=..., content="", function_call={"name": "get_weather", "arguments": "{}"}),
         "messages[1].function_call", "legacy OpenAI function_call"),
        (msgs_with(0, tool_calls=[call()]), "messages[0].tool_calls", "only assistant messages make tool calls"),
        (msgs_with(1, tool_calls=..., content="Let me look."), "messages[2]",
         "a tool result must follow an assistant message whose tool_calls it answers"),
        (msgs_with(2, tool_call_id="call_9"), "messages[2].tool_call_id", "answers none of the calls before it"),
        (msgs_with(2, role="function"), "messages[2].role", "unknown role 'function'"),
        (openai_row(tools={"get_weather": {}}), "tools", "expected a list of function schemas"),
        (openai_row(tools="[{"), "tools", "the tools text is not valid JSON"),
        (openai_row(tools=[{"type": "function", "function": {"description": "x"}}]), "tools[0].function.name",
         "expected the function name"),
        (openai_row(tools=[WEATHER, WEATHER]), "tools[1].function.name", "listed twice"),
    ],
)  # fmt: skip
def test_bad_tool_rows_name_the_field(row, field, expected):
    with pytest.raises(FieldError) as e:
        FORMATS["messages"](row)
    assert e.value.field == field
    assert expected in str(e.value)


@pytest.mark.parametrize(
    ("fmt", "row"),
    [
        ("alpaca", {"instruction": "q", "output": "a", "tools": [WEATHER]}),
        ("prompt_completion", {"prompt": "q", "completion": "a", "tools": [WEATHER]}),
        ("prompt", {"prompt": "q", "tools": [WEATHER]}),
    ],
)
def test_formats_that_cannot_carry_tools_refuse_them(fmt, row):
    with pytest.raises(FieldError, match="tools are not read here") as e:
        FORMATS[fmt](row)
    assert e.value.field == "tools"


def test_sharegpt_function_call_that_is_not_json_is_refused():
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "get_weather(Paris)"}]}
    with pytest.raises(FieldError, match="the function_call value is not valid JSON") as e:
        FORMATS["sharegpt"](row)
    assert e.value.field == "conversations[1].value"


def test_a_bad_tool_row_in_a_file_names_file_line_and_field(tmp_path):
    p = tmp_path / "tools.jsonl"
    p.write_text(json.dumps(openai_row()) + "\n" + json.dumps(msgs_with(1, tool_calls=[call(arguments="{")])) + "\n")
    ds = load_config(None, [f"data.train=[{{path: {p}}}]"]).data.train[0]
    with pytest.raises(DataError) as e:
        load_records(ds)
    assert str(e.value).startswith(f'{p}, line 2, field "messages[1].tool_calls[0].function.arguments": ')
