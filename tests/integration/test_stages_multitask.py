"""Stage gates and multi-task evaluation through the real training CLI, on the tiny preset.

A gate that the first stage cannot pass stops the sequence (exit status, message, no second stage); after
the threshold is relaxed, --resume does not retrain the first stage and runs the second. A run with two
training tasks and two eval tasks (each with its own metrics) reports eval loss per task during training
and per-task metrics before and after training."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tests.conftest import REPO, run_cli

TINY_SFT = REPO / "examples" / "data" / "tiny_sft.jsonl"


def _config(tmp_path: Path, gate_max: float) -> Path:
    cfg = {
        "model": {"name_or_path": "tiny"},
        "tuning": {"mode": "lora"},
        "data": {"max_length": 256, "check": None},
        "train": {"batch_size": 4, "lr": 1.0e-3, "log_every": 1, "threads": 1},
        "eval": {"forgetting": {"enabled": False}},
        "output": {"dir": str(tmp_path / "runs"), "name": "gated"},
        "stages": [
            {"name": "first", "data": {"train": [{"path": str(TINY_SFT)}], "eval_ratio": 0.25},
             "train": {"max_steps": 3}, "gate": {"metric": "eval_loss", "max": gate_max}},
            {"name": "second", "data": {"train": [{"path": str(TINY_SFT)}]}, "train": {"max_steps": 2}},
        ],
    }  # fmt: skip
    path = tmp_path / "gated.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_failed_gate_stops_the_sequence_and_resume_continues(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "gated"
    proc = run_cli("train", str(_config(tmp_path, gate_max=0.01)), cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "stage 1 (first) did not pass its gate: eval_loss = " in proc.stderr
    assert "> max 0.01; stages 2-2 not run" in proc.stderr
    assert (root / "1-first" / "final").is_dir() and not (root / "2-second").exists()
    summary = json.loads((root / "stages.json").read_text())
    assert len(summary) == 1 and summary[0]["gate"]["passed"] is False
    log_before = (root / "1-first" / "metrics.jsonl").read_text()
    eval_loss = [json.loads(x) for x in log_before.splitlines() if "eval_loss" in x][-1]["eval_loss"]
    assert summary[0]["gate"]["value"] == eval_loss

    proc = run_cli("train", str(_config(tmp_path, gate_max=100.0)), "--resume", cwd=tmp_path)
    assert "stage 1/2: first" in proc.stdout and "finished earlier, not trained again" in proc.stdout
    assert "gate passed: eval_loss" in proc.stdout
    assert (root / "1-first" / "metrics.jsonl").read_text() == log_before  # not retrained
    assert (root / "2-second" / "final" / "adapter_config.json").is_file()
    second = yaml.safe_load((root / "2-second" / "config.yaml").read_text())
    assert second["model"]["name_or_path"] == str(root / "1-first" / "merged")
    assert [s["stage"] for s in json.loads((root / "stages.json").read_text())] == ["first", "second"]


def test_multitask_run_reports_each_task(tmp_path: Path) -> None:
    rows = TINY_SFT.read_text().splitlines()
    (tmp_path / "copy.jsonl").write_text("\n".join(rows[:32]) + "\n")
    (tmp_path / "math.jsonl").write_text("\n".join(rows[32:]) + "\n")
    (tmp_path / "copy_test.jsonl").write_text("\n".join(rows[:6]) + "\n")
    (tmp_path / "math_test.jsonl").write_text("\n".join(rows[-6:]) + "\n")
    cfg = {
        "model": {"name_or_path": "tiny"},
        "data": {"train": [{"path": "copy.jsonl", "weight": 2.0}, {"path": "math.jsonl"}],
                 "eval_ratio": 0.25, "max_length": 256, "check": None},
        "train": {"batch_size": 4, "max_steps": 3, "lr": 1.0e-3, "threads": 1},
        "eval": {"data": [{"path": "copy_test.jsonl", "name": "copy", "metrics": ["exact_match", "loss"]},
                          {"path": "math_test.jsonl", "name": "math"}],
                 "metrics": ["loss"], "max_new_tokens": 8, "bootstrap_resamples": 200,
                 "forgetting": {"enabled": False}},
        "output": {"dir": "runs", "name": "multi"},
    }  # fmt: skip
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(cfg))
    run_cli("train", "multi.yaml", cwd=tmp_path)
    run = tmp_path / "runs" / "multi"

    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
    last = evals[-1]
    assert {"eval_loss/copy", "eval_loss/math"} <= set(last)  # split off each training task by eval_ratio
    assert min(last["eval_loss/copy"], last["eval_loss/math"]) <= last["eval_loss"]
    assert last["eval_loss"] <= max(last["eval_loss/copy"], last["eval_loss/math"])

    final = json.loads((run / "eval" / "final.json").read_text())
    assert set(final["metrics"]) == {"copy/exact_match", "copy/loss", "math/loss"}
    per = final["metrics"]["math/loss"]["per_example"]["loss"]
    assert [x == x for x in per] == [False] * 6 + [True] * 6  # NaN outside the task, so pairing stays by index
    assert final["predictions"][6:] == [""] * 6  # loss-only task: nothing generated for it
    rows = json.loads((run / "eval" / "comparison.json").read_text())["rows"]
    by_key = {(r["metric"], r["key"]): r for r in rows}
    assert by_key[("math/loss", "loss")]["n"] == 6 and by_key[("math/loss", "loss")]["n_missing"] == 0
    assert ("copy/exact_match", "exact_match") in by_key and by_key[("math/loss", "loss")]["label"] == "math/loss"
    report = (run / "report.md").read_text()
    assert "| math/loss (token-weighted) | " in report and "| copy/exact_match | " in report
