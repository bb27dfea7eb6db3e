"""`tunelab train` prints the planner's one-line summary at start, with the step and token counts it then trains
(tunelab.api.train in this process: the line is printed by the training run itself, which the CLI calls)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tests.integration.tunekit import DATA

from tunelab.api import load_config, plan, train
from tunelab.train.rundir import read_metrics


def test_train_prints_the_plan_summary_before_it_trains_and_trains_what_it_planned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    cfg = {
        "model": {"name_or_path": "tiny"},
        "tuning": {"mode": "lora"},
        "data": {"train": [{"path": str(DATA)}], "eval_ratio": 0.2, "check": None, "cache_dir": str(tmp_path / "c")},
        "train": {"epochs": 1, "batch_size": 8, "log_every": 1, "threads": 1},  # steps from the data, not max_steps
        "eval": {"baseline": False, "forgetting": {"enabled": False}},
        "output": {"dir": str(tmp_path / "runs"), "name": "run"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train(load_config(path))
    lines = capsys.readouterr().out.splitlines()
    summary = [i for i, line in enumerate(lines) if line.startswith("plan: ")]
    assert len(summary) == 1, lines
    line = lines[summary[0]]
    started = next(i for i, s in enumerate(lines) if s.startswith("training: "))
    assert summary[0] < started  # at start, before the first step
    m = re.fullmatch(r"plan: peak ~[\d.]+ GB \(fits in [\d.]+ GB, cpu \(1 threads\)\); (\d+) steps, ([\d,]+) tokens, "
                     r"~[^(]+ \(`tunelab plan` for details\)", line)  # fmt: skip
    assert m, line
    expected = plan(load_config(path))  # what `tunelab plan` counts from the same data
    assert (int(m.group(1)), int(m.group(2).replace(",", ""))) == (expected.steps, expected.tokens)
    assert lines[started] == f"training: {expected.steps} optimizer steps"
    assert max(r["step"] for r in read_metrics(tmp_path / "runs" / "run")) == expected.steps
