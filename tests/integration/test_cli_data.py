"""The real CLI on the real shared data: validate, prepare --debug, config-schema, and user errors without tracebacks."""

import json

from tests.conftest import run_cli, shared_path


def config(tmp_path, datasets, extra=""):
    lines = (
        ["data:", "  train:"] + [f"    - path: {d}" for d in datasets] + [f"  cache_dir: {tmp_path / 'cache'}", extra]
    )
    p = tmp_path / "run.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_validate_and_prepare_debug_on_alpaca_demo(tmp_path):
    cfg = config(
        tmp_path, [shared_path("data", "alpaca_demo", "alpaca_en_demo.json")], "  eval_ratio: 0.1\n  max_length: 4096"
    )
    report = json.loads(run_cli("validate", str(cfg), "--json").stdout)
    ds = report["datasets"][0]
    assert (ds["format"], ds["records"]) == ("alpaca", 999)
    assert ds["train"] + ds["eval"] + ds["fully_masked"] + ds["dropped_too_long"] == 999
    assert (ds["eval"], ds["truncated"], ds["fully_masked"]) == (100, 0, 0)
    out = run_cli("prepare", str(cfg), "--debug", "2").stdout
    assert out.count("=== ") == 2 and "alpaca_en_demo.json[1]" in out
    assert "⟦" in out and "<|im_end|>⟧" in out  # the reply and its end-of-turn carry loss
    assert '"cached": true' in out  # validate filled the cache; prepare reused it


def test_validate_preference_demo_counts(tmp_path):
    dpo = shared_path("data", "preference_demo", "dpo_en_demo.json")
    kto = shared_path("data", "preference_demo", "kto_en_demo.json")
    report = json.loads(run_cli("validate", str(config(tmp_path, [dpo, kto])), "--json").stdout)
    assert report["kind"] == "preference"
    (d, k) = report["datasets"]
    assert (d["format"], d["records"], d["sequences"]) == ("preference", 300, 600)
    assert (k["format"], k["records"], k["sequences"]) == ("kto", 300, 300)
    out = run_cli("prepare", str(config(tmp_path, [dpo])), "--debug", "1", "--no-tokens").stdout
    assert " chosen — " in out and " rejected — " in out


def test_user_errors_are_one_message_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"\n')
    proc = run_cli("validate", str(config(tmp_path, [bad])), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.jsonl, line 2: invalid JSON" in proc.stderr
    (tmp_path / "typo.yaml").write_text("train:\n  lr: 1\n  epocs: 2\n")
    proc = run_cli("validate", str(tmp_path / "typo.yaml"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "typo.yaml:3: unknown key 'train.epocs' (did you mean 'epochs'?)" in proc.stderr


def test_config_schema_is_json_schema():
    schema = json.loads(run_cli("config-schema").stdout)
    assert set(schema["properties"]) == {
        "model",
        "tuning",
        "method",
        "data",
        "train",
        "eval",
        "output",
        "stages",
        "tune",
    }


def test_prepare_debug_shows_the_tool_call_trained_and_a_template_without_tools_is_refused(tmp_path):
    from tests.unit.data.test_tool_calls import OLD_CHATML
    from tests.unit.data.test_tool_rows import openai_row

    data = tmp_path / "tools.jsonl"
    data.write_text(json.dumps(openai_row()) + "\n")
    out = run_cli("prepare", str(config(tmp_path, [data])), "--debug", "1", "--no-tokens").stdout
    assert '⟦<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>⟧' in out
    assert '\n<tool_response>\n{"temp_c": 18}\n</tool_response>' in out  # shown, outside ⟦ ⟧
    (tmp_path / "plain.jinja").write_text(OLD_CHATML)
    cfg = config(tmp_path, [data], f"model:\n  chat_template: {tmp_path / 'plain.jinja'}")
    proc = run_cli("validate", str(cfg), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f'{data}, line 1, field "tools": the chat template ignores `tools`' in proc.stderr
