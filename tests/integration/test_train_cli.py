"""The train/generate verbs as a user runs them: a real subprocess, the example config, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

from tunelab.api import generate
from tunelab.train.checkpoint import checkpoints
from tunelab.train.rundir import read_metrics

EXAMPLE = REPO / "examples" / "sft-lora.yaml"


def cli(*args: str, **kw) -> subprocess.Popen | subprocess.CompletedProcess:  # noqa: ANN003
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "tunelab", *args]
    if kw.pop("background", False):
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, **kw)


def test_train_then_generate(tmp_path: Path) -> None:
    out = cli(
        "train", str(EXAMPLE), f"output.dir={tmp_path}", "train.epochs=4", "train.eval_every=4", "train.threads=1"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "sft-lora"
    assert "trainable params:" in out.stdout and f"run saved to {run}" in out.stdout
    losses = [m["loss"] for m in read_metrics(run) if "loss" in m]
    assert losses[-1] < losses[0]
    assert (run / "final" / "adapter_config.json").is_file() and (run / "final" / "chat_template.jinja").is_file()
    gen = cli("generate", str(run), "--prompt", "Reverse the word.\nkite", "--max-new-tokens", "12")
    assert gen.returncode == 0, gen.stderr[-3000:]
    # the CLI prints exactly what the Python API generates from the same run (greedy)
    assert gen.stdout == generate(run, prompt="Reverse the word.\nkite", max_new_tokens=12) + "\n"


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    args = [
        f"output.dir={tmp_path}",
        "train.threads=1",
        "train.max_steps=100000",
        "train.log_every=1",
        "train.save_every=100000",
        "train.eval_every=100000",  # no best-checkpoint save at step 10 when a loaded machine delays the SIGINT
    ]
    proc = cli("train", str(EXAMPLE), *args, background=True)
    metrics = tmp_path / "sft-lora" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "resume with: tunelab train" in err and "Traceback" not in err
    saved = [s for s, _ in checkpoints(tmp_path / "sft-lora" / "checkpoints")]
    assert len(saved) == 1 and saved[0] >= 2
    stop = saved[0] + 2
    done = cli("train", str(EXAMPLE), *args[:2], f"train.max_steps={stop}", "train.log_every=1", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    assert [m["step"] for m in read_metrics(tmp_path / "sft-lora") if "loss" in m][-3:] == [stop - 2, stop - 1, stop]


def test_bad_config_is_one_clear_error(tmp_path: Path) -> None:
    out = cli("train", str(EXAMPLE), "train.lrr=1")
    assert out.returncode == 2 and "unknown key 'train.lrr' (did you mean 'lr'?)" in out.stderr
    assert "Traceback" not in out.stderr
