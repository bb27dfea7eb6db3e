"""Reports from a run directory: markdown tables, a self-contained HTML page, and Chromium rendering it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

from tunelab.eval.compare import compare_results
from tunelab.eval.perplexity import ForgettingResult
from tunelab.eval.report import ReportData, collect_run, render_markdown, report_run, shown, write_report
from tunelab.eval.runner import EvalExample, EvalResult
from tunelab.scoring.metrics import MetricResult

REPO = Path(__file__).resolve().parents[3]


def _run_dir(tmp_path: Path, regressed: bool = True) -> Path:
    run = tmp_path / "run1"
    (run / "eval").mkdir(parents=True)
    log = [{"step": s, "loss": 3.0 / s} for s in range(1, 21)] + [
        {"step": s, "eval_loss": 3.2 / s} for s in (5, 10, 20)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    (run / "config.yaml").write_text("model:\n  name_or_path: tiny\n")
    (run / "manifest.json").write_text(json.dumps([{"path": "train.jsonl", "sha256": "abc123"}]))
    ex = [EvalExample([{"role": "user", "content": f"Q{i} <script>alert(1)</script>"}], "yes", f"d.jsonl:{i + 1}")
          for i in range(30)]  # fmt: skip
    base = EvalResult("base", ex, ["no"] * 30,
                      {"exact_match": MetricResult("exact_match", {"exact_match": 0.2}, {"exact_match": [1.0] * 6 + [0.0] * 24}),
                       "classification": MetricResult("classification", {"accuracy": 0.2}, {"accuracy": [1.0] * 6 + [0.0] * 24},
                                                      {"unparseable": 3})})  # fmt: skip
    tuned = EvalResult("tuned", ex, ["yes"] * 25 + ["no"] * 5,
                       {"exact_match": MetricResult("exact_match", {"exact_match": 0.8}, {"exact_match": [1.0] * 25 + [0.0] * 5}),
                        "classification": MetricResult("classification", {"accuracy": 0.8}, {"accuracy": [0.0] + [1.0] * 24 + [0.0] * 5})})  # fmt: skip
    base.save(run / "eval" / "baseline.json")
    tuned.save(run / "eval" / "final.json")
    fg = ForgettingResult(10.0, 12.5 if regressed else 10.1, 0.25 if regressed else 0.01, 0.1, regressed, 42)
    (run / "eval" / "forgetting.json").write_text(json.dumps(asdict(fg)))
    return run


def _images(page: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


def test_report_from_run_dir(tmp_path) -> None:
    run = _run_dir(tmp_path)
    md_path, html_path = report_run(run)
    md, page = md_path.read_text(), html_path.read_text()
    assert "| exact_match | 0.2 | 0.8333 | 0.6333 | [0.4667, 0.8] | better | 19 | 0 |" in md  # A, B, diff, CI
    assert "| exact_match | 0.2 | 0.8 |\n" in md and "| classification/accuracy | 0.2 | 0.8 |" in md
    assert "better" in md and "**REGRESSION**" in md and "+25.0%" in md
    assert "base: classification: 3 of 30 unparseable" in md
    assert "abc123" in md and "name_or_path: tiny" in md
    imgs = _images(page)
    assert len(imgs) == 3 and all(i.format == "PNG" and i.size[0] > 200 for i in imgs)  # loss, bars, forgetting
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page  # data is escaped
    assert "class='regressed'>REGRESSION" in page
    assert 'src="http' not in page and "<link" not in page  # self-contained


def test_report_notes_missing_parts_and_no_regression(tmp_path) -> None:
    run = _run_dir(tmp_path, regressed=False)
    (run / "metrics.jsonl").unlink()
    data = collect_run(run)
    assert any("no training log" in n for n in data.notes)
    md = render_markdown(data)
    assert "REGRESSION" not in md and ": ok" in md
    page = write_report(data, tmp_path / "out")[1].read_text()
    assert len(_images(page)) == 2


def test_report_from_plain_data(tmp_path) -> None:
    ex = [EvalExample("p", "r")] * 20
    a = EvalResult("a", ex, None, {"loss": MetricResult("loss", {"loss": 2.0}, {"loss": [2.0] * 20})})
    b = EvalResult("b", ex, None, {"loss": MetricResult("loss", {"loss": 1.0}, {"loss": [1.0, 1.2] * 10})})
    data = ReportData("plain", comparison=compare_results(a, b, n_resamples=500).to_dict())
    md = render_markdown(data)
    assert "| loss (mean over examples) | 2 | 1.1 | -0.9 |" in md and "better" in md


def test_raw_model_output_is_shown_on_one_line_with_escapes(tmp_path) -> None:
    assert shown("a\x00b\nc\u00e9\u00b2\u00a0\u200d\u3000") == "a\\x00b\\nc\u00e9\u00b2\u00a0\u200d\u3000"  # text stays
    ex = [EvalExample("p", "r")] * 20
    a = EvalResult("a", ex, ["x\x00`y`\n"] * 20, {"f1": MetricResult("f1", {"f1": 0.0}, {"f1": [0.0] * 20})})
    b = EvalResult("b", ex, ["r"] * 20, {"f1": MetricResult("f1", {"f1": 1.0}, {"f1": [1.0] * 20})})
    data = ReportData("raw", comparison=compare_results(a, b, n_resamples=200).to_dict())
    md = render_markdown(data)
    assert "- a (0): `` x\\x00`y`\\n ``" in md and "\x00" not in md
    b2 = EvalResult("b", ex, ["a``b"] * 20, b.metrics)
    md2 = render_markdown(ReportData("raw", comparison=compare_results(a, b2, n_resamples=200).to_dict()))
    assert "- b (1): ``` a``b ```" in md2  # the fence outgrows the longest backtick run
    assert "\x00" not in write_report(data, tmp_path)[1].read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path) -> None:
    _, page = report_run(_run_dir(tmp_path))
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_report_html.py"), str(page),
                           "--screenshot", str(shot), "--min-images", "3"],
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "images-loaded:3/3" in proc.stdout and shot.is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install -y chromium)")
def test_render_check_fails_on_a_page_without_working_plots(tmp_path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><p>hi</p><img src="data:image/png;base64,bm90IGEgcG5n"></body></html>')
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_report_html.py"), str(page),
                           "--screenshot", str(tmp_path / "s.png")], capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode != 0


def _json_run(tmp_path: Path) -> Path:
    """A run directory as training leaves it: data card and manifest from the real data check, JSON results
    scored by the real metric, where the fine-tuned model fixes most examples and breaks two."""
    from tunelab.quality.card import preflight
    from tunelab.scoring.metrics import json_fields

    run = tmp_path / "jrun"
    (run / "eval").mkdir(parents=True)
    data = tmp_path / "train.jsonl"
    refs = [json.dumps({"intent": ["refund", "cancel"][i % 2], "item": f"item{i}"}) for i in range(20)]
    data.write_text("".join(json.dumps({"prompt": f"ticket {i}", "completion": r}) + "\n" for i, r in enumerate(refs)))
    preflight([str(data)], run_dir=run)
    (run / "data_manifest.json").write_text(json.dumps([{"path": str(data), "sha256": "feedbeef"}]))
    ex = [EvalExample(f"ticket {i}", r, f"train.jsonl:{i + 1}") for i, r in enumerate(refs)]
    base_out = [refs[i] if i < 2 else "no idea" for i in range(20)]  # right on 0 and 1 only
    tuned_out = ["{}" if i < 2 else refs[i].replace(f"item{i}", "x") if i > 15 else refs[i] for i in range(20)]
    for name, outs, file in (("base", base_out, "baseline"), ("fine-tuned", tuned_out, "final")):
        losses = [2.0 + i / 10 for i in range(20)] if name == "base" else [1.0 + i / 20 for i in range(20)]
        loss = MetricResult("loss", {"loss": 1.7, "perplexity": 5.5}, {"loss": losses}, {"tokens": 400})
        EvalResult(name, ex, outs, {"json": json_fields(outs, refs), "loss": loss}).save(run / "eval" / f"{file}.json")
    return run


def test_report_has_the_data_card_field_accuracy_regressions_first_and_labelled_losses(tmp_path) -> None:
    run = _json_run(tmp_path)
    md_path, html_path = report_run(run)
    md, page = md_path.read_text(), html_path.read_text()
    card = (run / "data_card.md").read_text()
    sha = re.search(r"`([0-9a-f]{64})`", card)[1]  # the card's own content, not a fixed string
    assert "## Data card" in md and "### Sources" in md and sha in md
    assert "<h2>Data card</h2>" in page and sha in page and "<table>" in page.split("<h2>Data card</h2>")[1]
    assert "feedbeef" in md  # data_manifest.json, as runs write it

    final = json.loads((run / "eval" / "final.json").read_text())["metrics"]["json"]["details"]["per_field_accuracy"]
    base = json.loads((run / "eval" / "baseline.json").read_text())["metrics"]["json"]["details"]["per_field_accuracy"]
    assert final == {"intent": 0.9, "item": 0.7}  # what the metric measured on the outputs above
    assert "## Per-field accuracy (json)" in md
    for name in ("intent", "item"):
        assert f"| {name} | {base[name]:.4g} | {final[name]:.4g} |" in md
        assert f"<tr><td>{name}</td><td>{base[name]:.4g}</td><td>{final[name]:.4g}</td></tr>" in page

    flips = re.findall(r"^### (improved|regressed) on (\S+)(?: \(also [^)]+\))?: example (\d+)", md, re.M)
    assert len(flips) == len(set(flips)) == len({(d, i) for d, _, i in flips})  # an example once per direction
    directions = [d for d, _, _ in flips]
    assert directions[0] == "regressed" and "improved" in directions
    assert directions == sorted(directions, key=lambda d: d != "regressed")  # every regression before improvements
    assert {int(i) for d, _, i in flips if d == "regressed"} == {0, 1}  # the two examples the fine-tune broke
    assert "regressed on json_all_fields (also json_field_accuracy): example 0" in md
    assert "4 (example, score) pairs got worse and 70 got better" in md and page.index("flip regressed") < page.index(
        "flip improved"
    )

    assert "| loss (token-weighted) | 1.7 | 1.7 |" in md and "| loss (mean over examples) | 2.95 | 1.475 |" in md
    assert "token-weighted" in page and "loss (mean over examples)" in page


def test_no_regressions_is_said_and_a_from_scratch_forgetting_check_has_no_verdict(tmp_path) -> None:
    from tunelab.eval.perplexity import LossResult, forgetting_check

    before = LossResult(6.9, 1000.0, [6.9], [10])
    after = LossResult(11.0, 60000.0, [11.0], [10])
    fg = forgetting_check(before, after, 0.1, not_applicable="the base model tiny is a randomly initialised preset")
    assert not fg.regressed and not fg.applicable and fg.relative_change > 50
    ex = [EvalExample("p", "r")] * 20
    a = EvalResult("a", ex, ["x"] * 20, {"f1": MetricResult("f1", {"f1": 0.0}, {"f1": [0.0] * 20})})
    b = EvalResult("b", ex, ["r"] * 20, {"f1": MetricResult("f1", {"f1": 1.0}, {"f1": [1.0] * 20})})
    data = ReportData("t", comparison=compare_results(a, b, n_resamples=200).to_dict(), forgetting=asdict(fg))
    md = render_markdown(data)
    assert "No example got worse on any score; 20 (example, score) pairs got better" in md
    assert "REGRESSION" not in md and "not applicable: the base model tiny is a randomly initialised preset" in md
    page = write_report(data, tmp_path)[1].read_text()
    assert "class='na'>not applicable" in page and "REGRESSION" not in page
