"""The quickstart's closing summary: the comparison rows and the forgetting check's result, from the run's files."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tunelab.eval.compare import compare_results
from tunelab.eval.perplexity import LossResult, forgetting_check, not_applicable_reason
from tunelab.eval.runner import EvalExample, EvalResult
from tunelab.quickstart import format_summary, summarize
from tunelab.scoring.metrics import MetricResult


def _run(tmp_path: Path, base: str) -> Path:
    run = tmp_path / "quickstart"
    (run / "eval").mkdir(parents=True)
    ex = [EvalExample("p", "r")] * 20
    a = EvalResult("base", ex, None, {"loss": MetricResult("loss", {"loss": 7.0}, {"loss": [7.0, 7.1] * 10})})
    b = EvalResult("fine-tuned", ex, None, {"loss": MetricResult("loss", {"loss": 0.1}, {"loss": [0.1, 0.2] * 10})})
    (run / "eval" / "comparison.json").write_text(json.dumps(compare_results(a, b, n_resamples=200).to_dict()))
    before, after = LossResult(6.9, 1035.0, [6.9], [10]), LossResult(11.3, 84185.0, [11.3], [10])
    fg = forgetting_check(before, after, 0.1, not_applicable=not_applicable_reason(base))
    (run / "eval" / "forgetting.json").write_text(json.dumps(asdict(fg)))
    return run


def test_summary_states_the_forgetting_check_not_applicable_from_scratch(tmp_path: Path) -> None:
    text = format_summary({**summarize(_run(tmp_path, "tiny-1m")), "seconds": 12.0, "config": "qs.yaml"})
    assert "  loss (mean per example)      7.050 -> 0.150   diff -6.900" in text
    assert ("forgetting check: general-text perplexity 1,035 -> 84,185 (+8033.8%, threshold +10%): not applicable "
            "(the base model tiny-1m is a randomly initialised preset that never learned general text)") in text  # fmt: skip
    assert "REGRESSION" not in text


def test_summary_flags_a_regression_of_a_pretrained_base(tmp_path: Path) -> None:
    text = format_summary({**summarize(_run(tmp_path, str(tmp_path / "my-model"))), "seconds": 1.0, "config": "q"})
    assert "(+8033.8%, threshold +10%): REGRESSION" in text
