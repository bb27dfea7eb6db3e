"""The job queue's runner: claims queued jobs, trains each in its own process, reaps, cancels, and resumes
the jobs a stopped or crashed service left running.

One thread polls the database (`jobs.poll_s`, and at once when `wake()` is called): it starts up to
`jobs.max_running` workers on this machine (worker.py; each claims its job with a conditional update, so
services that share a database never run one job twice), reaps the ones that ended, and kills the ones
whose job was cancelled. A worker runs in its own session with its output in JOB_DIR/train.log.

Restarts: `stop()` (the service is shutting down) sends each worker SIGTERM, which makes the training loop
finish its step and save a checkpoint; the job goes back to `queued` with `resume` set. `start()` first
looks for jobs still marked running on this host (the service died): a worker still alive is stopped the
same way (it stops by itself at its next step when its parent is gone), and the job is queued to resume.
Either way the next start trains it on from its run's last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

import tunelab
from tunelab.studio.config import JobsConfig
from tunelab.studio.store import JobStore
from tunelab.studio.worker import INTERRUPTED

log = logging.getLogger("tunelab.studio")
MAX_ATTEMPTS = 10  # a job interrupted this many times (not by a service stopping) fails instead of looping
OnSuccess = Callable[[dict[str, Any], Path], dict[str, Any]]  # (job, run dir) -> column updates


@dataclass
class Child:
    job_id: str
    proc: subprocess.Popen
    log: IO[bytes]
    job_dir: Path


class JobQueue:
    def __init__(self, store: JobStore, cfg: JobsConfig, on_success: OnSuccess | None = None) -> None:
        self.store, self.cfg, self.on_success = store, cfg, on_success
        self.host = socket.gethostname()
        self.root = Path(cfg.dir).expanduser().resolve()
        self.children: dict[str, Child] = {}
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one tick at a time (the thread, and stop())

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.recover()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="tunelab-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Pause the running jobs (checkpoint, back to queued with resume) and stop the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            for child in list(self.children.values()):
                rc = self._terminate(child)
                if rc == 0:
                    self._reaped(child, rc)
                else:
                    self._pause(child.job_id, "The service stopped while this job ran")

    def wake(self) -> None:
        self._wake.set()

    def recover(self) -> None:
        """Jobs left running on this host by a service that is gone: stop their workers, queue them to resume."""
        for job in self.store.running_on(self.host):
            pid = job["pid"]
            if pid and _is_worker(pid, job["id"]):
                _stop_pid(pid, self.cfg.shutdown_timeout_s)
            self._pause(job["id"], "The service restarted while this job ran")

    def _pause(self, job_id: str, why: str) -> None:
        if self.store.requeue(job_id):
            self.store.add_event(job_id, f"{why}; it resumes from its last checkpoint", {"resume": True})

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._lock:
                    if not self._stopping.is_set():
                        self.tick()
            except Exception:  # a database hiccup must not end the queue; the next tick retries
                log.exception("job queue tick failed")
            self._wake.wait(self.cfg.poll_s)
            self._wake.clear()

    def tick(self) -> None:
        for child in list(self.children.values()):
            rc = child.proc.poll()
            if rc is not None:
                self._close(child)
                self._reaped(child, rc)
        self._kill_cancelled()
        while len(self.children) < self.cfg.max_running and not self._stopping.is_set():
            job = self.store.claim(self.host, self.cfg.max_running)
            if job is None:
                break
            self._spawn(job)

    def _spawn(self, job: dict[str, Any]) -> None:
        job_dir = self.job_dir(job["id"])
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "result.json").unlink(missing_ok=True)
        out = (job_dir / "train.log").open("ab")
        src = str(Path(tunelab.__file__).resolve().parents[1])  # the worker runs this very code
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
            [src, *filter(None, [os.environ.get("PYTHONPATH")])]))  # fmt: skip
        cmd = [sys.executable, "-m", "tunelab.studio.worker", self.store.url, job["id"], str(job_dir)]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.children[job["id"]] = Child(job["id"], proc, out, job_dir)
        self.store.set_pid(job["id"], proc.pid)
        again = f" (attempt {job['attempts']})" if job["attempts"] > 1 else ""
        self.store.add_event(job["id"], f"Fine-tuning job started{again}", {"pid": proc.pid, "host": self.host})

    def _kill_cancelled(self) -> None:
        for child in list(self.children.values()):
            job = self.store.job(child.job_id)
            if job is not None and job["status"] == "cancelled":
                _signal(child.proc, signal.SIGKILL)
                child.proc.wait()
                self._close(child)
                self.store.add_event(child.job_id, "The training process was stopped")

    def _reaped(self, child: Child, rc: int) -> None:
        job = self.store.job(child.job_id)
        if job is None or job["status"] != "running":
            return  # cancelled meanwhile: nothing to record
        result = _read_result(child.job_dir)
        if rc == 0 and "run_dir" in result:
            return self._succeeded(job, Path(result["run_dir"]))
        if (rc == INTERRUPTED or rc == -signal.SIGTERM) and job["attempts"] < MAX_ATTEMPTS:
            return self._pause(job["id"], "The training process was interrupted")
        message = result.get("error") or _ended(rc, child.job_dir / "train.log")
        error = {"code": result.get("code", "server_error"), "message": message, "param": None}
        if self.store.finish(job["id"], "failed", error=error):
            self.store.add_event(job["id"], f"Fine-tuning job failed: {message}", error, level="error")

    def _succeeded(self, job: dict[str, Any], run_dir: Path) -> None:
        try:
            updates = self.on_success(job, run_dir) if self.on_success else {}
        except Exception as e:
            log.exception("finishing job %s failed", job["id"])
            error = {"code": "server_error", "message": f"{type(e).__name__}: {e}", "param": None}
            if self.store.finish(job["id"], "failed", error=error):
                self.store.add_event(job["id"], f"Fine-tuning job failed: {error['message']}", error, level="error")
            return
        if self.store.finish(job["id"], "succeeded", **updates):
            self.store.add_event(job["id"], "The job has successfully completed", {"run_dir": str(run_dir)})

    def _terminate(self, child: Child) -> int:
        """SIGTERM (the loop saves a checkpoint at the end of its step), SIGKILL after the timeout."""
        if child.proc.poll() is None:
            _signal(child.proc, signal.SIGTERM)
            try:
                child.proc.wait(self.cfg.shutdown_timeout_s)
            except subprocess.TimeoutExpired:
                _signal(child.proc, signal.SIGKILL)
                child.proc.wait()
        self._close(child)
        return int(child.proc.returncode)

    def _close(self, child: Child) -> None:
        child.log.close()
        self.children.pop(child.job_id, None)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the worker's whole session (data loader processes too)


def _is_worker(pid: int, job_id: str) -> bool:
    try:
        cmd = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "tunelab.studio.worker" in cmd and job_id in cmd


def _stop_pid(pid: int, timeout: float) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass


def _read_result(job_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((job_dir / "result.json").read_text()))
    except (OSError, ValueError):
        return {}


def _ended(rc: int, log_path: Path) -> str:
    how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    tail = ""
    try:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        tail = f"; last log line: {lines[-1][:300]}" if lines else ""
    except OSError:
        pass
    return f"the training process ended with {how} (log: {log_path}){tail}"
