"""The end of a search on real tiny runs: the best trial against the config as written on the test split
(eval.data), with the paired bootstrap CI, and a verdict that agrees with the CI."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pytest
from tests.integration.tunekit import DATA, write_config

from tunelab.api import load_config
from tunelab.tune import tune

LINES = {"better": "the gain is real (the CI excludes 0)", "worse": "the best trial is WORSE on the test split",
         "no significant difference": "no significant difference: the gain seen on the validation split may be luck"}  # fmt: skip


def split(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny SFT file as a training file (48 records) and a test split (the other 16)."""
    lines = DATA.read_text().splitlines(keepends=True)
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(lines[:48]))
    test.write_text("".join(lines[48:]))
    return train, test


def ci_verdict(row: dict) -> str:
    """What the CI says for a lower-is-better score (diff = best - default)."""
    if row["ci_high"] < 0:
        return "better"
    return "worse" if row["ci_low"] > 0 else "no significant difference"


# the one trial's lr against the config's: a trained model beats an untouched one on the test split; equal
# configs train equal models (a zero difference, not significant)
@pytest.mark.parametrize(("trial_lr", "default_lr", "expected"),
                         [(1e-2, 1e-6, "better"), (1e-6, 1e-2, "worse"), (1e-6, 1e-6, "no significant difference")])  # fmt: skip
def test_the_verdict_on_the_test_split_agrees_with_the_paired_bootstrap_ci(
    tmp_path: Path, trial_lr: float, default_lr: float, expected: str
):
    train, test = split(tmp_path)
    sections = {"data": {"train": [{"path": str(train)}]}, "train": {"lr": default_lr},
                "eval": {"baseline": False, "data": [{"path": str(test)}], "forgetting": {"enabled": False}}}  # fmt: skip
    space = {"train.lr": {"type": "categorical", "choices": [trial_lr]}}
    path = write_config(tmp_path, sections, trials=1, compare=True, space=space, pruner={"kind": "none"})
    result = tune(load_config(path), path)
    root = tmp_path / "runs" / "search"
    assert load_config(root / "default" / "config.yaml").train.lr == default_lr  # the config as written
    cmp = json.loads((root / "best-vs-default" / "eval" / "comparison.json").read_text())
    assert (cmp["name_a"], cmp["name_b"]) == ("default", "trial-0000")
    (row,) = [r for r in cmp["rows"] if (r["metric"], r["key"]) == ("loss", "loss")]
    assert row["n"] == 16  # every test example, paired
    assert row["verdict"] == ci_verdict(row) == expected
    shown = [line for line in result.verdict if "<- objective" in line]
    assert len(shown) == 1 and f"[{row['ci_low']:+.4g}, {row['ci_high']:+.4g}]  {expected}" in shown[0]
    assert result.verdict[-1] == f"verdict on loss: {LINES[expected]}"
    html = (root / "report.html").read_text()
    assert "<h2>Best vs default on the test split</h2>" in html and escape(result.verdict[-1]) in html
    assert "Parameter importances: too few complete trials" in html  # one trial: none to show
    assert json.loads((root / "importances.json").read_text()) == {}
