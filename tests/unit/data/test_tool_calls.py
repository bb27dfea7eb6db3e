"""Golden tests for tool use: row -> rendered text -> trained spans, on the presets' ChatML and the fallback
template; templates that cannot show tools are refused with the file and line; tools-free data is unchanged."""

import json
from pathlib import Path

import pytest
from tests.conftest import SHARED, shared_path
from tests.unit.data.test_tokenize import check, trained_segments
from tests.unit.data.test_tool_rows import WEATHER, openai_row
from transformers import AutoTokenizer

from tunelab.config import load_config
from tunelab.data.formats import FORMATS
from tunelab.data.pipeline import prepare
from tunelab.data.tokenize import Encoder, TemplateError, chat_template_for
from tunelab.errors import DataError
from tunelab.models.presets import byte_tokenizer

BOS, END = "<|bos|>", "<|im_end|>"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
RESULT = '{"temp_c": 18}'

# The two shipped templates as they were before they learned tools: tools-free data must render the same.
OLD_CHATML = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OLD_FALLBACK = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n"
    "{% else %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def row_with_system():
    row = openai_row()
    row["messages"].insert(0, {"role": "system", "content": "Be brief."})
    return row


def test_golden_tool_call_on_the_chatml_preset(tok):
    ex = Encoder(tok, chat_template_for(tok)).encode(FORMATS["messages"](row_with_system()))
    text = (
        f"{BOS}<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions. Their signatures are "
        f"within <tools></tools>:\n<tools>\n{json.dumps(WEATHER)}\n</tools>\n\nFor each call, write a JSON object "
        "with the function name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n"
        f'{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>{END}\n'
        f"<|im_start|>user\nWeather in Paris?{END}\n"
        f"<|im_start|>assistant\n{CALL}{END}\n"
        f"<|im_start|>tool\n<tool_response>\n{RESULT}\n</tool_response>{END}\n"
        f"<|im_start|>assistant\n18 C.{END}\n"
    )
    check(tok, ex, text, [f"{CALL}{END}", f"18 C.{END}"])  # the call trains; the tool result does not


def test_golden_tool_call_on_the_fallback_template(tok):
    ex = Encoder(tok, chat_template_for(tok, "fallback")).encode(FORMATS["messages"](row_with_system()))
    text = (
        f"{BOS}### Tools:\n{json.dumps(WEATHER)}\n\n### System:\nBe brief.\n\n### User:\nWeather in Paris?\n\n"
        f"### Assistant:\n{CALL}{END}\n\n### Tool:\n{RESULT}\n\n### Assistant:\n18 C.{END}\n\n"
    )
    check(tok, ex, text, [f"{CALL}{END}", f"18 C.{END}"])


def test_content_before_parallel_calls_and_a_context_only_call_turn(tok):
    row = openai_row(tools=None)
    second = {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET"}}}
    row["messages"][1] |= {"content": "Checking.", "tool_calls": [*row["messages"][1]["tool_calls"], second]}
    row["messages"].insert(3, {"role": "tool", "content": "12:00"})
    enc = Encoder(tok, chat_template_for(tok))
    both = f'Checking.\n{CALL}\n<tool_call>\n{{"name": "get_time", "arguments": {{"tz": "CET"}}}}\n</tool_call>{END}'
    assert trained_segments(tok, enc.encode(FORMATS["messages"](row))) == [both, f"18 C.{END}"]
    row["messages"][1]["weight"] = 0  # the calls are context now: rendered, not trained
    ex = enc.encode(FORMATS["messages"](row))
    assert both in tok.decode(ex.input_ids) and trained_segments(tok, ex) == [f"18 C.{END}"]


CONVERSATIONS = [
    ("alpaca", {"instruction": "Add", "input": "2+2", "output": "4", "system": "S", "history": [["hi", "yo"]]}),
    ("messages", {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A1", "weight": 0},
                               {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A2"}]}),
    ("sharegpt", {"system": "S", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "row"), CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
@pytest.mark.parametrize(("new", "old"), [(None, OLD_CHATML), ("fallback", OLD_FALLBACK)], ids=["chatml", "fallback"])
def test_tools_free_conversations_encode_exactly_as_before(tok, fmt, row, new, old):
    rec = FORMATS[fmt](row)
    now, before = Encoder(tok, chat_template_for(tok, new)).encode(rec), Encoder(tok, old).encode(rec)
    assert (now.input_ids, now.labels) == (before.input_ids, before.labels)


def test_prompt_views_render_calls(tok):
    rec = FORMATS["prompt"]({"prompt": openai_row()["messages"][:3]})
    [(_, ex)] = Encoder(tok, chat_template_for(tok)).encode_views(rec)
    assert CALL in tok.decode(ex.input_ids) and ex.n_trainable == 0


# --------------------------------------------------------------------------- templates that cannot show tools

SHOWS_TOOLS_DROPS_CALLS = "{% if tools %}{{ tools | tojson }}{% endif %}" + OLD_CHATML
NAME_ONLY = (
    "{% if tools %}{% for t in tools %}[{{ t['function']['name'] }}]{% endfor %}{% endif %}"
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
    "{% for c in m['tool_calls'] or [] %}call {{ c['function']['name'] }}{% endfor %}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
RAISES_ON_TOOL = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('roles must alternate user/assistant') }}"
    "{% endif %}{{ m['content'] }}{% endfor %}"
)


@pytest.mark.parametrize(
    ("template", "row", "field", "why"),
    [
        (OLD_CHATML, openai_row(), "tools", "the chat template ignores `tools`: the conversation renders the same"),
        (OLD_CHATML, openai_row(tools=None), "tool_calls",
         "does not render the tool call get_weather({\"city\": \"Paris\"}) of turn 1: its function name is not in"),
        (SHOWS_TOOLS_DROPS_CALLS, openai_row(), "tool_calls", "its function name is not in turn 1's own text"),
        (NAME_ONLY, openai_row(), "tool_calls", "the argument text 'city' is not in the conversation"),
        (RAISES_ON_TOOL, openai_row(tools=None), None, "chat template failed on a conversation with roles [user, "
         "assistant, tool, assistant]: roles must alternate user/assistant"),
    ],
    ids=["ignores-tools", "drops-calls", "drops-calls-shows-tools", "name-without-arguments", "raises"],
)  # fmt: skip
def test_a_template_that_cannot_show_tools_is_refused_with_file_line_and_why(tmp_path, tok, template, row, field, why):
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                    + "\n" + json.dumps(row) + "\n")  # fmt: skip
    (tmp_path / "t.jinja").write_text(template)
    cfg = load_config(None, [f"data.train=[{{path: {data}}}]", f"model.chat_template={tmp_path / 't.jinja'}",
                             f"data.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    with pytest.raises(DataError) as e:
        prepare(cfg, tok)
    where = f"{data}, line 2" + (f', field "{field}"' if field else "")
    assert str(e.value).startswith(f"{where}: ") and why in str(e.value)


def test_other_call_layouts_pass_the_check(tok):
    # XML-style arguments and a "parameters" JSON layout in an ipython turn: what other model families write.
    xml = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% for c in m['tool_calls'] or [] %}"
        "<function={{ c['function']['name'] }}>{% for k, v in c['function']['arguments'].items() %}"
        "<parameter={{ k }}>{{ v }}</parameter>{% endfor %}</function>{% endfor %}[/end]{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    llama = (
        "{% for m in messages %}{% set role = 'ipython' if m['role'] == 'tool' else m['role'] %}<{{ role }}>"
        "{% for c in m['tool_calls'] or [] %}{\"name\": \"{{ c['function']['name'] }}\", \"parameters\": "
        "{{ c['function']['arguments'] | tojson }}}{% endfor %}{{ m['content'] }}<eot>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    rec = FORMATS["messages"](openai_row(tools=None))
    assert trained_segments(tok, Encoder(tok, xml).encode(rec))[0] == (
        "<function=get_weather><parameter=city>Paris</parameter></function>[/end]"
    )
    assert trained_segments(tok, Encoder(tok, llama).encode(rec))[0] == (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<eot>'
    )


def test_json_escaped_argument_values_are_found(tok):
    row = openai_row(tools=None)
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"city": 'Say "hi"\nin Köln'}
    segs = trained_segments(tok, Encoder(tok, chat_template_for(tok)).encode(FORMATS["messages"](row)))
    assert (
        segs[0]
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Say \\"hi\\"\\nin Köln"}}\n</tool_call>' + END
    )


def test_encoder_error_names_the_field(tok):
    with pytest.raises(TemplateError) as e:
        Encoder(tok, OLD_CHATML).encode(FORMATS["messages"](openai_row()))
    assert e.value.field == "tools"


# --------------------------------------------------------------------------- real tokenizers


def test_real_tokenizer_without_a_template_trains_the_call_through_the_fallback():
    tok = AutoTokenizer.from_pretrained(shared_path("models", "stories260k"))
    ex = Encoder(tok, chat_template_for(tok)).encode(FORMATS["messages"](openai_row()))
    assert ex.input_ids.count(tok.bos_token_id) == 1
    trained = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100]
    text = tok.decode(trained, skip_special_tokens=True)
    assert "get_weather" in text and "Paris" in text and "18 C." in text
    assert "temp_c" not in text  # the tool result is input, not trained


def _tool_templates() -> list[Path]:
    """Shared models whose own chat template mentions tools (none ship with this repo)."""
    models = SHARED / "models"
    found = []
    for d in sorted(p for p in models.iterdir() if p.is_dir()) if models.is_dir() else []:
        texts = [f.read_text(errors="ignore") for f in (d / "chat_template.jinja", d / "tokenizer_config.json")
                 if f.is_file()]  # fmt: skip
        if any("tool_calls" in t for t in texts):
            found.append(d)
    return found


def test_a_real_tool_template_trains_the_call_and_not_the_result():
    models = _tool_templates()
    if not models:
        pytest.skip(f"no model under {SHARED / 'models'} has a chat template with tool calls")
    for path in models:
        tok = AutoTokenizer.from_pretrained(path)
        ex = Encoder(tok, chat_template_for(tok)).encode(FORMATS["messages"](openai_row()))
        trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100])
        assert "get_weather" in trained and "Paris" in trained and "temp_c" not in trained, path


def test_a_template_that_json_encodes_tool_results_passes_and_one_that_drops_them_is_refused(tok):
    calls = "{% for c in m['tool_calls'] or [] %}<call>{{ c['function'] | tojson }}</call>{% endfor %}"
    quoted = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] | tojson if m['role'] == 'tool' else m['content'] }}" + calls + "<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    rec = FORMATS["messages"](openai_row(tools=None))
    assert '"{\\"temp_c\\": 18}"' in tok.decode(Encoder(tok, quoted).encode(rec).input_ids)
    drops = quoted.replace("{% for m in messages %}", "{% for m in messages if m['role'] != 'tool' %}")
    with pytest.raises(TemplateError, match="drops the tool result of turn 2") as e:
        Encoder(tok, drops).encode(rec)
    assert e.value.field == "content"
