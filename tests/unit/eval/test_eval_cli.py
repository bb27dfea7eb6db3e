"""The eval/compare/report verbs through Typer, on the tiny preset and a run directory saved from it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tunelab.cli.evaluate import app
from tunelab.config import RunConfig, dump_config
from tunelab.eval.runner import EvalResult
from tunelab.models.presets import build_preset

runner = CliRunner()
METRICS = "eval.metrics=[exact_match,f1,loss]"


def _data(tmp_path):
    path = tmp_path / "test.jsonl"
    rows = [{"instruction": f"Repeat: {w}", "output": w} for w in ("apple", "river", "stone", "cloud", "lamp", "frog")]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _run_dir(tmp_path):
    run = tmp_path / "run"
    model, tok = build_preset("tiny", seed=0)
    model.save_pretrained(run / "final")
    tok.save_pretrained(run / "final")
    (run / "config.yaml").write_text(dump_config(RunConfig()))
    return run


def test_eval_compare_report(tmp_path) -> None:
    data = _data(tmp_path)
    res = runner.invoke(app, ["eval", "tiny", "--data", str(data), "-s", METRICS, "-s", "eval.max_new_tokens=6",
                              "--out", str(tmp_path / "tiny.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "exact_match: exact_match=0" in res.output and "loss: loss (token-weighted)=" in res.output
    saved = EvalResult.load(tmp_path / "tiny.json")
    assert len(saved.examples) == 6 and saved.decoding["max_new_tokens"] == 6

    # A run directory holding the same weights: the comparison must find no difference at all.
    run = _run_dir(tmp_path)
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", "tiny", str(run), "--data", str(data), "-s", METRICS, "-s",
                              "eval.max_new_tokens=6", "-s", "eval.bootstrap_resamples=500", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.count("no significant difference") == 3  # exact_match, f1, loss
    # A is the randomly initialised preset: the numbers are shown, but there is nothing to forget.
    assert (
        "forgetting: general-text perplexity" in res.output and "(+0.0%, threshold +10%): not applicable" in res.output
    )
    assert "the base model tiny is a randomly initialised preset" in res.output
    cmp = json.loads((out / "eval" / "comparison.json").read_text())
    assert [r["diff"] for r in cmp["rows"]] == [0.0, 0.0, 0.0]
    assert (out / "report.html").is_file() and (out / "eval" / "forgetting.json").is_file()

    (out / "report.html").unlink()
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_compare_saved_results_and_missing_data(tmp_path) -> None:
    data = _data(tmp_path)
    for seed in (0, 1):
        res = runner.invoke(app, ["eval", "tiny", "--data", str(data), "-s", "eval.metrics=[loss]",
                                  "-s", f"model.seed={seed}", "--out", str(tmp_path / f"s{seed}.json")])  # fmt: skip
        assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["compare", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--out", str(tmp_path / "c")]
    )
    assert res.exit_code == 0, res.output
    assert "loss (mean over examples):" in res.output and "forgetting" not in res.output  # saved: no model to probe
    res = runner.invoke(app, ["eval", "tiny"])
    assert res.exit_code != 0 and "no eval data" in str(res.exception)
