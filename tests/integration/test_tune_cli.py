"""`tunelab tune` end to end on the tiny preset: TPE with pruning, the best config, resume, two processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import REPO, run_cli
from tests.integration.tunekit import labels, write_config

from tunelab.api import load_config, train
from tunelab.tune import tune


def test_tpe_with_pruning_finishes_8_trials_and_the_best_config_trains(tmp_path: Path):
    path = write_config(tmp_path)
    result = tune(load_config(path), path)
    root = tmp_path / "runs" / "search"
    assert result.counts["complete"] + result.counts["pruned"] == 8
    assert result.counts["pruned"] >= 1  # TPE keeps trying low learning rates the median pruner stops
    states = labels(root)
    assert sorted(states) == list(range(8))
    for n, info in states.items():
        run = root / f"trial-{n:04d}"
        assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()  # a normal run folder
        assert (run / "final").is_dir() == (info["state"] == "complete")
    pruned = [i for i in states.values() if i["state"] == "pruned"]
    assert all("pruned at step" in i["why"] for i in pruned)
    rows = (root / "trials.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("trial,state,train.lr,tuning.mode,tuning.lora.r,eval_loss")
    html = (root / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html and "Parallel coordinates" in html
    best_loss = min(i["values"][0] for i in states.values() if i["state"] == "complete")
    assert result.best is not None and result.best["values"][0] == pytest.approx(best_loss)
    best_cfg = load_config(result.best_config, ["train.max_steps=2"])
    assert best_cfg.tune is None and best_cfg.train.lr == pytest.approx(result.best["params"]["train.lr"])
    run = train(best_cfg)
    assert (run / "final").is_dir() and run == root / "best"


def test_an_interrupted_study_resumes_without_redoing_finished_trials(tmp_path: Path):
    path = write_config(tmp_path, trials=4, pruner={"kind": "none"})
    root = tmp_path / "runs" / "search"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "tune", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # stop it while its third trial trains
        if labels(root).get(2, {}).get("state") == "running" and (root / "trial-0002" / "metrics.jsonl").is_file():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "resume with: tunelab tune" in out
    assert labels(root)[2]["state"] == "interrupted"
    done_before = {n for n, i in labels(root).items() if i["state"] == "complete"}
    assert done_before == {0, 1}
    mtimes = {n: (root / f"trial-{n:04d}" / "trial.json").stat().st_mtime for n in done_before}

    result = tune(load_config(path), path)
    assert result.counts["complete"] == 4 and result.counts["fail"] == 1
    after = labels(root)
    retried = [i for n, i in after.items() if n > 2 and i["params"] == after[2]["params"]]
    assert retried and retried[0]["state"] == "complete"  # the interrupted parameters ran again
    assert all((root / f"trial-{n:04d}" / "trial.json").stat().st_mtime == m for n, m in mtimes.items())


def test_two_processes_share_one_sqlite_study(tmp_path: Path):
    path = write_config(tmp_path, trials=4, workers=2, pruner={"kind": "none"})
    path.write_text(path.read_text().replace("max_steps: 6", "max_steps: 40"))  # a trial outlasts a process start
    out = run_cli("tune", str(path)).stdout
    root = tmp_path / "runs" / "search"
    assert "study search: 4 complete" in out or "study search: 5 complete" in out, out  # 5: both took the last
    states = labels(root)
    assert len({i["pid"] for i in states.values()}) == 2, states  # the leader and its worker both ran trials
    assert (root / "worker-1.log").is_file() and (root / "study.db").is_file()
    assert all(i["state"] == "complete" for i in states.values())
