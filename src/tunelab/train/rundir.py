"""The run directory `runs/<name>/` and what is written into it besides checkpoints.

config.yaml (the resolved config: what ran), data_manifest.json (input files, sha256, record counts),
data_report.json, environment.json (library versions, hardware), metrics.jsonl (one JSON object per
log/eval line), checkpoints/, and final/ (a Hugging Face model or peft adapter folder plus tokenizer).

A new run folder holds `.starting` (the pid and host) until the training loop begins. A start that fails
before then (bad data, a crash, a kill) leaves what it wrote for inspection (data_check.json, the baseline
eval), and the next attempt at the same run reuses that folder instead of refusing it as an existing run;
the teacher's completions (teacher/) are kept for it, the rest is cleared.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys
import time
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import torch

from tunelab.config import RunConfig
from tunelab.errors import TunelabError

LIBRARIES = ("tunelab", "torch", "transformers", "peft", "accelerate", "tokenizers", "datasets", "safetensors")


def choose_run_dir(cfg: RunConfig, config_path: str | Path | None, resume: bool) -> Path:
    """runs/<name>: output.name, else `<config stem>-<time>`; --resume without a name picks the latest
    run of that config that has a checkpoint."""
    root = Path(cfg.output.dir)
    stem = Path(config_path).stem if config_path else "run"
    if cfg.output.name:
        run = root / cfg.output.name
    elif resume:
        candidates = sorted(
            (p for p in root.glob(f"{stem}-*") if (p / "checkpoints").is_dir()), key=lambda p: p.stat().st_mtime
        )
        if not candidates:
            raise TunelabError(f"--resume: no earlier run of {stem} with checkpoints under {root}/")
        run = candidates[-1]
    else:
        run = root / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if resume and not (run / "checkpoints").is_dir():
        raise TunelabError(f"--resume: {run} has no checkpoints/ (set save_every to write checkpoints)")
    if not resume and run.exists() and any(run.iterdir()) and not cfg.output.overwrite and not failed_start(run):
        raise TunelabError(
            f"{run} already exists: pass --resume to continue it, set output.overwrite=true to reuse it, "
            "or choose another output.name"
        )
    return run


STARTING = ".starting"
KEPT_ON_RESTART = ("teacher",)  # expensive to redo, and reused only when teacher, settings and inputs match


def failed_start(run: Path) -> bool:
    """Whether `run` is the leftover of a start that never reached training (its starter is gone)."""
    marker = run / STARTING
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return True  # cut short while it was written
    if host != socket.gethostname():
        return False  # no way to tell whether it is still starting there
    if pid != os.getpid() and psutil.pid_exists(pid):
        raise TunelabError(f"{run} is being started by process {pid}; wait for it, or choose another output.name")
    return True


def mark_starting(run: Path) -> bool:
    """Create the run folder with its `.starting` marker; a failed earlier start's leftovers are cleared first.
    Returns whether such leftovers were there."""
    leftover = failed_start(run) if run.exists() else False
    if leftover:
        for p in run.iterdir():
            if p.name in KEPT_ON_RESTART:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    run.mkdir(parents=True, exist_ok=True)
    (run / STARTING).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return leftover


def mark_started(run: Path) -> None:
    """Training has begun: from now on the folder is a run (checkpoints, metrics), never cleared."""
    (run / STARTING).unlink(missing_ok=True)


def environment() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": versions,
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "cuda": torch.version.cuda,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(),
    }


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


class MetricsLog:
    """Appends one JSON line per record to metrics.jsonl (flushed: a crash loses at most the last line).
    On resume the lines after the checkpoint's step are dropped: those steps are replayed. Each line also
    carries `time` (Unix seconds when written) and `total_steps` (the run's planned optimizer steps), so a
    reader (the studio's live curves) can tell progress and an ETA from the file alone; the trackers do not
    get these two."""

    def __init__(self, path: Path, resume_step: int | None = None, total_steps: int | None = None) -> None:
        self.path, self.total_steps = path, total_steps
        if resume_step is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if (s := _step_of(ln)) is not None and s <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))
        self._f = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        stamped = {**record, "time": round(time.time(), 3), "total_steps": self.total_steps}
        self._f.write(json.dumps(stamped) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
