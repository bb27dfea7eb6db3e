"""What `tunelab train` prints, run as a user runs it: into a pipe (a log file, CI) and in a terminal (a pty)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.conftest import REPO, run_cli

from tunelab.train.rundir import read_metrics

EXAMPLE = REPO / "examples" / "sft-lora.yaml"
LINE = re.compile(r"^step (\d+)/(\d+)(?:  loss (\S+))?(?:  eval loss (\S+))?(?:  eval ppl \S+)?(?:  lr (\S+))?")
ARGS = ["train.threads=1", "train.epochs=2", "train.log_every=3", "train.eval_every=4", "train.save_every=100",
        "eval.metrics=[exact_match]", "eval.max_new_tokens=4"]  # fmt: skip


def test_piped_output_is_one_plain_line_per_log_interval(tmp_path: Path) -> None:
    proc = run_cli("train", str(EXAMPLE), f"output.dir={tmp_path}", *ARGS)
    assert "\r" not in proc.stdout and "\r" not in proc.stderr  # no bar redrawing itself in a log file
    for noise in ("Writing model shards", "it/s]", "FutureWarning", "warnings.warn", "LOAD REPORT"):
        assert noise not in proc.stdout + proc.stderr, noise
    run = tmp_path / "sft-lora"
    lines = {int(m[1]): m for m in map(LINE.match, proc.stdout.splitlines()) if m}
    steps: dict[int, dict] = {}
    for rec in read_metrics(run):  # the run's own log: every step with a loss or an eval loss gets one line
        steps.setdefault(rec["step"], {}).update(rec)
    assert sorted(lines) == sorted(steps) and len(steps) >= 6
    total = {m[2] for m in lines.values()}
    assert len(total) == 1 and int(total.pop()) == max(steps)
    for step, rec in steps.items():
        m = lines[step]
        assert m[3] == (f"{rec['loss']:.4f}" if "loss" in rec else None), (step, m[0])
        assert m[4] == (f"{rec['eval_loss']:.4f}" if "eval_loss" in rec else None), (step, m[0])
    assert sum(1 for m in lines.values() if m[3] and m[4]) >= 2  # eval at a log step shares its line
    assert "forgetting check: general-text perplexity" in proc.stdout
    assert "not applicable (the base model tiny is a randomly initialised preset" in proc.stdout

    # The report of this run carries the run's own data card and the verdict without a regression flag.
    md = (run / "report.md").read_text()
    card_hash = re.search(r"`([0-9a-f]{64})`", (run / "data_card.md").read_text())
    assert card_hash and "## Data card" in md and card_hash[1] in md
    assert "**REGRESSION**" not in md and "not applicable: the base model tiny" in md
    assert json.loads((run / "eval" / "forgetting.json").read_text())["applicable"] is False


def test_terminal_keeps_the_bar_and_prints_the_eval_loss(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0 columns wide
    args = [f"output.dir={tmp_path}", "train.threads=1", "train.max_steps=4", "train.eval_every=2",
            "train.save_every=100", "eval.baseline=false"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(EXAMPLE), *args], stdin=subprocess.DEVNULL,
                            stdout=child, stderr=child, env=env)  # fmt: skip
    os.close(child)
    out, deadline = b"", time.monotonic() + 600
    while time.monotonic() < deadline:
        if not select.select([main], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    if proc.poll() is None:
        proc.kill()
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")[-3000:]
    text = out.decode(errors="replace")
    assert "step/s" in text  # the bar is there
    evals = [r for r in read_metrics(tmp_path / "sft-lora") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert f"step {r['step']}/4  eval loss {r['eval_loss']:.4f}" in text
