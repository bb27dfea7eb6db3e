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
    assert "| loss | 2 | 1.1 | -0.9 |" in md and "better" in md


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
