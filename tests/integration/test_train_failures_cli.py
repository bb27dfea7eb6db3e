"""Bad input and bad luck as a user meets them in the CLI: one clear error (exit 2, no traceback), nothing lost."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, run_cli

from tunelab.train.checkpoint import checkpoints, verify

EXAMPLE = REPO / "examples" / "sft-lora.yaml"
FAST = ["train.threads=1", "eval.baseline=false", "eval.forgetting.enabled=false", "data.check=null"]


def test_non_finite_config_values_fail_before_any_run_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(EXAMPLE.read_text().replace("epochs: 5", "epochs: 1e400"))
    out = run_cli("train", str(cfg), f"output.dir={tmp_path / 'runs'}", "train.lr=.inf", check=False)
    assert out.returncode == 2 and f"{cfg}:17: train.epochs: Input should be a finite number" in out.stderr
    assert f"{cfg}:20: train.lr: Input should be a finite number (got inf)" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()


def test_random_bytes_in_the_data_are_one_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    good = (REPO / "examples" / "data" / "tiny_sft.jsonl").read_bytes().splitlines(keepends=True)[:3]
    noise = bytes(random.Random(0).randrange(128, 256) for _ in range(4096))  # never valid UTF-8 at its start
    data.write_bytes(b"".join(good) + noise + b"\n")
    out = run_cli("validate", str(EXAMPLE), f"data.train=[{{path: {data}, format: alpaca}}]", check=False)
    offset = sum(map(len, good))
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"{data}, line 4: not UTF-8 text: byte 0x{noise[0]:02x} at byte offset {offset}" in out.stderr
    assert "Traceback" not in out.stderr


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    args = ["train.max_steps=100000", "train.log_every=1", "train.save_every=100000", "train.eval_every=100000"]
    cmd = [sys.executable, "-m", "tunelab", "train", str(EXAMPLE), f"output.dir={tmp_path}", *FAST, *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "sft-lora" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # what `kill`, systemd, Slurm and Kubernetes send first
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM: finishing this step, then saving a checkpoint" in out
    assert "interrupted (SIGTERM) at step" in err and "resume with: tunelab train" in err and "Traceback" not in err
    saved = checkpoints(tmp_path / "sft-lora" / "checkpoints")
    assert len(saved) == 1 and saved[0][0] >= 2 and verify(saved[0][1]) is None


def test_a_failed_checkpoint_write_is_named_and_leaves_no_partial_folder(tmp_path: Path) -> None:
    def limit() -> None:  # the run's small files fit, a checkpoint does not: as on a nearly full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "tunelab", "train", str(EXAMPLE), f"output.dir={tmp_path}", *FAST,
           "train.max_steps=3", "train.save_every=2"]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert out.returncode == 2, out.stderr[-3000:]
    assert (
        "error: checkpoint step-2 not saved: a file is over the file system's or the process's file-size" in out.stderr
    )
    assert "Traceback" not in out.stderr
    assert list((tmp_path / "sft-lora" / "checkpoints").iterdir()) == []  # no .tmp-step-2


def test_the_data_check_stops_a_run_before_any_model_loads(tmp_path: Path) -> None:
    """A folder with only a tokenizer: loading the model from it would fail, so the leakage error can only come
    first if the check runs before the model loads."""
    from tunelab.config import ModelConfig
    from tunelab.models.load import load_tokenizer

    load_tokenizer(ModelConfig(name_or_path="tiny")).save_pretrained(tmp_path / "tokenizer-only")
    rows = (REPO / "examples" / "data" / "tiny_sft.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "train.jsonl").write_text("".join(rows[:20]))
    (tmp_path / "test.jsonl").write_text("".join(rows[:2]))  # both leak
    args = [f"model.name_or_path={tmp_path / 'tokenizer-only'}", f"output.dir={tmp_path / 'runs'}",
            f"data.train=[{{path: {tmp_path / 'train.jsonl'}}}]", f"data.eval=[{{path: {tmp_path / 'test.jsonl'}}}]"]  # fmt: skip
    out = run_cli("train", str(EXAMPLE), *args, check=False)
    assert (
        out.returncode == 2 and "[error] leak_exact: 2 eval records have the same input as a train record" in out.stderr
    )
    assert "Traceback" not in out.stderr
