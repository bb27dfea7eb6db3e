"""The Ollama Modelfile: each chat template tunelab ships or detects, translated to Go's template language,
renders the same text as the original Jinja on conversations with and without a system prompt and over
several turns; stops, SYSTEM and sampling come from the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_factory import make_run

from tunelab.config import dump_config, load_config
from tunelab.data.tokenize import FALLBACK_TEMPLATE
from tunelab.export.exporters import export
from tunelab.export.gotemplate import render
from tunelab.export.modelfile import FAMILIES, go_template, ollama_data, translate
from tunelab.models.presets import byte_tokenizer

# As shipped in the tokenizer_config.json of meta-llama/Meta-Llama-3-8B-Instruct and of
# mistralai/Mistral-7B-Instruct-v0.2 / v0.1 (the same strings llama.cpp's chat-template tests use).
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}"
)
MISTRAL_V01 = MISTRAL.replace("eos_token}}", "eos_token + ' ' }}")
ZEPHYR = (  # a template no family covers: no TEMPLATE is written
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TEMPLATES = {"chatml": None, "tunelab-fallback": FALLBACK_TEMPLATE, "llama3": LLAMA3, "mistral": MISTRAL,
             "mistral-v0.1": MISTRAL_V01}  # fmt: skip

# Conversations apart from the ones translate() checks itself, so the test is not the code's own sample.
SYS = {"role": "system", "content": "You answer in French."}
CONVERSATIONS = [
    [{"role": "user", "content": "Bonjour"}],
    [SYS, {"role": "user", "content": "What is 1+1?"}],
    [
        SYS,
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d\ne"},
        {"role": "user", "content": "f?"},
    ],  # fmt: skip
    [
        {"role": "user", "content": "{{ not a template }}"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "% and # and [INST] as text"},
    ],  # fmt: skip
]


def tokenizer_with(template: str | None) -> object:
    tok = byte_tokenizer()
    if template is not None:
        tok.chat_template = template
    return tok


@pytest.mark.parametrize("family", list(TEMPLATES))
def test_translated_template_renders_like_the_jinja_one(family: str) -> None:
    tok = tokenizer_with(TEMPLATES[family])
    tr = translate(tok)
    assert tr.family == family and tr.template == go_template(family, tok.eos_token)
    compared = 0
    for conv in CONVERSATIONS:
        if family.startswith("mistral") and conv[0]["role"] == "system":
            assert not tr.system_ok  # Mistral's template refuses a system message; so SYSTEM is left out
            continue
        jinja = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        assert jinja.startswith(tok.bos_token)  # every template here writes BOS; the runtime adds it instead

        assert render(tr.template, ollama_data(conv)) == jinja.removeprefix(tok.bos_token)
        compared += 1
    assert compared >= 2


def test_a_wrong_translation_is_caught() -> None:
    """The comparison can fail: a Go template one newline off does not pass for ChatML."""
    tok = tokenizer_with(None)
    off = go_template("chatml", tok.eos_token).replace("<|im_end|>\n{{ end }}", "<|im_end|>{{ end }}", 1)
    conv = CONVERSATIONS[2]
    assert (
        render(off, ollama_data(conv))
        != tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)[len(tok.bos_token) :]
    )


def test_unknown_template_gets_no_template_line(tmp_path: Path) -> None:
    tr = translate(tokenizer_with(ZEPHYR))
    assert tr.family is None and tr.template is None and "renders like" in (tr.reason or "")
    assert set(FAMILIES) <= set((tr.reason or "").replace(",", "").split())


def test_modelfile_of_a_run(tmp_path: Path) -> None:
    """FROM, the ChatML template, stops, and the run's evaluation decoding; no SYSTEM (the run has none)."""
    run = make_run(tmp_path, "run", lora_seed=2)
    cfg = (run / "config.yaml").read_text().replace("temperature: 0.0\n  top_p: 1.0", "temperature: 0.7\n  top_p: 0.9")
    (run / "config.yaml").write_text(cfg)
    ev = load_config(run / "config.yaml").eval
    assert ev.temperature == 0.7
    out = export(run, "gguf", tmp_path / "g", qtype="q8_0")
    text = (out / "Modelfile").read_text()
    lines = text.splitlines()
    assert "FROM ./run-q8_0.gguf" in lines
    assert 'TEMPLATE """' + go_template("chatml", "<|im_end|>") + '"""' in text
    assert {'PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|im_end|>"'} <= set(lines)
    assert {"PARAMETER temperature 0.7", "PARAMETER top_p 0.9", "PARAMETER top_k 0", "PARAMETER repeat_penalty 1",
            f"PARAMETER num_predict {ev.max_new_tokens}"} <= set(lines)  # fmt: skip
    assert not any(line.startswith("SYSTEM") for line in lines)


def _with_training_data(run: Path, systems: list[str]) -> None:
    rows = [{"messages": [{"role": "system", "content": s}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i, s in enumerate(systems)]  # fmt: skip
    data = run / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").unlink()
    cfg = load_config(
        None, [f"data.train=[{{path: {data}, format: messages}}]", "model.name_or_path=tiny", "tuning.mode=full"]
    )
    (run / "config.yaml").write_text(dump_config(cfg))


def test_system_prompt_shared_by_every_training_conversation(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run")
    _with_training_data(run, ["Be brief.\nAlways."] * 3)
    out = export(run, "gguf", tmp_path / "g", qtype="f16")
    assert 'SYSTEM """Be brief.\nAlways."""' in (out / "Modelfile").read_text()
    info = json.loads((out / "export.json").read_text())["modelfile"]
    assert info["system"] == "Be brief.\nAlways." and info["template"] == "chatml"


def test_no_system_prompt_when_the_conversations_differ(tmp_path: Path) -> None:
    run = make_run(tmp_path, "run")
    _with_training_data(run, ["Be brief.", "Be brief.", "Be long."])
    out = export(run, "gguf", tmp_path / "g", qtype="f16")
    assert "SYSTEM" not in (out / "Modelfile").read_text()
    assert "share no single system prompt" in json.loads((out / "export.json").read_text())["modelfile"]["system_note"]


def test_a_base_model_gets_the_plain_prompt(tmp_path: Path) -> None:
    tok = tokenizer_with(None)
    tok.chat_template = None
    tr = translate(tok)
    assert (tr.family, tr.template, tr.stops) == ("raw", "{{ .Prompt }}", [tok.eos_token])
    assert render(tr.template, {"Prompt": "Once upon a time"}) == "Once upon a time"
