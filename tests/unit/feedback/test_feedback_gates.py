"""The retrain gates on comparisons in the shape tunelab.eval.compare writes (built from its own dataclasses): a
significant gain on the held-out feedback is required, a significant regression on an original eval set or the
forgetting check stops the run, and a stopped run cannot be deployed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.eval.compare import Comparison, MetricComparison
from tunelab.feedback.deploy import gates_of
from tunelab.feedback.gates import GateReport, judge


def row(task: str, key: str, a: float, b: float, low: float, high: float, higher: bool = True) -> MetricComparison:
    return MetricComparison(f"{task}/{key}", key, a, b, b - a, low, high, low > 0 or high < 0, 40, 0, higher,
                            (a, a), (b, b))  # fmt: skip


def comparison(*rows: MetricComparison) -> dict:
    return Comparison("A", "B", list(rows), []).to_dict()


GAIN = row("feedback", "json_field_accuracy", 0.2, 0.7, 0.3, 0.7)
SAME = row("test", "json_field_accuracy", 0.5, 0.48, -0.1, 0.06)
WORSE = row("test", "json_field_accuracy", 0.5, 0.3, -0.3, -0.1)
FG_OK = {"before": 10.0, "after": 10.5, "relative_change": 0.05, "regressed": False, "threshold": 0.1}


def test_a_gain_without_regression_passes() -> None:
    report = judge(comparison(GAIN, SAME, row("test", "loss", 1.0, 1.1, -0.05, 0.2, False)), FG_OK, "v1", "v2")
    assert report.passed and report.metric == "json_field_accuracy"
    assert [c.name for c in report.checks] == ["feedback_gain", "no_regression:test", "forgetting"]
    assert "0.2 -> 0.7, diff +0.5, 95% CI [+0.3, +0.7], n=40: better" in report.checks[0].detail
    saved = json.loads(json.dumps(report.to_dict()))  # gates.json, as deploy reads it
    assert GateReport.from_dict(saved).checks == report.checks


def test_a_regression_on_the_original_eval_stops_it(tmp_path: Path) -> None:
    report = judge(comparison(GAIN, WORSE), FG_OK, "v1", "v2")
    assert not report.passed
    assert [(c.name, c.passed) for c in report.checks] == [
        ("feedback_gain", True), ("no_regression:test", False), ("forgetting", True)]  # fmt: skip
    run = tmp_path / "v2"
    run.mkdir()
    (run / "gates.json").write_text(json.dumps(report.to_dict()))
    with pytest.raises(TunelabError, match=r"its gates failed \(no_regression:test: json_field_accuracy: 0.5 -> 0.3"):
        gates_of(run, skip_gates=False)


def test_no_significant_gain_or_forgetting_stops_it() -> None:
    flat = row("feedback", "json_field_accuracy", 0.2, 0.3, -0.05, 0.25)
    assert not judge(comparison(flat, SAME), None, "v1", "v2").passed
    forgot = FG_OK | {"after": 14.0, "relative_change": 0.4, "regressed": True}
    report = judge(comparison(GAIN, SAME), forgot, "v1", "v2")
    assert not report.passed and "(+40.0%), threshold +10%: REGRESSION" in report.checks[-1].detail


def test_the_metric_and_the_slice_must_exist() -> None:
    assert judge(comparison(row("feedback", "loss", 2.0, 1.0, -1.2, -0.8, False)), None, "a", "b").metric == "loss"
    with pytest.raises(TunelabError, match="no 'feedback' task"):
        judge(comparison(SAME), None, "a", "b")
    with pytest.raises(TunelabError, match="--gate-metric rougeL: the feedback slice was scored with json_field"):
        judge(comparison(GAIN), None, "a", "b", "rougeL")
