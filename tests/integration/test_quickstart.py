"""The main job end to end through the real CLI, shortened to one epoch: run dir, report, and a real improvement."""

import json

from tests.conftest import run_cli


def test_quickstart_end_to_end(tmp_path):
    out = tmp_path / "qs"
    proc = run_cli("quickstart", "--out", str(out), "--epochs", "1", cwd=tmp_path)
    run = out / "runs" / "quickstart"
    for name in ("config.yaml", "metrics.jsonl", "data_card.md", "data_manifest.json", "environment.json",
                 "report.md", "report.html", "final/config.json", "final/tokenizer.json", "eval/baseline.json",
                 "eval/final.json", "eval/comparison.json", "eval/forgetting.json"):  # fmt: skip
        assert (run / name).is_file(), name
    rows = {(r["metric"], r["key"]): r for r in json.loads((run / "eval" / "comparison.json").read_text())["rows"]}
    acc = rows[("json", "json_field_accuracy")]
    assert acc["value_a"] == 0.0  # a model trained from scratch starts knowing nothing
    assert acc["value_b"] > 0.3 and acc["ci_low"] > 0  # better, and the 95% CI excludes zero
    assert rows[("loss", "loss")]["ci_high"] < 0
    assert "json/json_field_accuracy" in proc.stdout and "report:" in proc.stdout
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "json_field_accuracy" in html
