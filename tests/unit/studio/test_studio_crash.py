"""`tunelab studio` killed outright (SIGKILL: no shutdown runs) while a job trains: the job's training process
notices at its next step, saves a checkpoint and stops; the next `tunelab studio` finds the job still marked
running, queues it, and resumes it from that checkpoint. Real processes throughout (slow: four Python starts)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml
from studiokit import WORDS, chat_rows, job_defaults, wait_for, write_jsonl

from tunelab.studio.store import JobStore

REPO = Path(__file__).resolve().parents[3]


def _start(tmp: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    log = (tmp / f"studio-{port}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "studio", "tiny", "--config", "studio.yaml",
                             "--port", str(port)], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    wait_for(lambda: proc.poll() is not None or _up(port), 240, 0.5, "the studio to start")
    assert proc.poll() is None, (tmp / f"studio-{port}.log").read_text()[-3000:]
    return proc


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_killed_studio_leaves_a_checkpoint_and_the_next_one_resumes_the_job(tmp_path: Path) -> None:
    cfg = {"jobs": {"poll_s": 0.2, "defaults": job_defaults(max_steps=80, save_every=5)},
           "serve": {"limits": {"requests_per_minute": 6000, "burst": 1000}}}  # fmt: skip
    (tmp_path / "studio.yaml").write_text(yaml.safe_dump(cfg))
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(WORDS[:8]))
    port = _port()
    first = _start(tmp_path, port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        with train.open("rb") as f:
            job = client.fine_tuning.jobs.create(
                model="base", training_file=client.files.create(file=f, purpose="fine-tune").id
            )
        wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, why="a checkpoint")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    store = JobStore(f"sqlite:///{tmp_path / 'studio' / 'studio.db'}")
    worker = store.job(job.id)["pid"]  # type: ignore[index]
    wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE, 120,
             why="the orphaned worker to stop")  # fmt: skip
    result = json.loads((tmp_path / "studio" / "jobs" / job.id / "result.json").read_text())
    stopped_at = result["interrupted_at"]
    assert store.job(job.id)["status"] == "running"  # type: ignore[index]  # nobody was left to say otherwise
    assert max(k["step"] for k in store.checkpoints(job.id)) == stopped_at

    second = _start(tmp_path, port)
    try:
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                        why="the resumed job")  # fmt: skip
        assert done.status == "succeeded", done.error
        messages = [e.message for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data)]
        assert any(m.startswith("The service restarted while this job ran") for m in messages)
        assert f"Resumed from the checkpoint at step {stopped_at} of 80" in messages
        assert done.fine_tuned_model in [m.id for m in client.models.list().data]
    finally:
        second.terminate()
        second.wait(timeout=120)
