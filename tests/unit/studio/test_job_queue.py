"""The job queue's database and runner without training: states, one job at a time per machine, cancel,
events in order, and the recovery of jobs a dead service left running. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.studio.config import JobsConfig
from tunelab.studio.queue import JobQueue
from tunelab.studio.store import JobStore


def _store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> JobStore:
    url = f"sqlite:///{tmp_path / 'q.db'}" if kind == "sqlite" else request.getfixturevalue("pg_url")
    return JobStore(url)


def _job(store: JobStore, name: str) -> dict:
    return store.create_job(kind="run", owner="alice", model="tiny", config_yaml="{}", run_dir=f"/runs/{name}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_states_claims_cancel_and_event_order(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = _store(kind, tmp_path, request)
    a, b, c = (_job(store, n) for n in "abc")
    assert [j["status"] for j in (a, b, c)] == ["queued"] * 3

    first = store.claim("host1", max_running=1)
    assert first is not None and first["id"] == a["id"] and first["status"] == "running" and first["attempts"] == 1
    assert store.claim("host1", max_running=1) is None  # one at a time on this machine
    other = store.claim("host2", max_running=1)  # another machine sharing the database takes the next
    assert other is not None and other["id"] == b["id"]

    assert store.cancel(c["id"]) == "queued"
    assert store.cancel(c["id"]) is None  # already ended
    assert store.claim("host1", max_running=2) is None  # nothing queued is left
    assert store.finish(a["id"], "succeeded", fine_tuned_model="ft:x::1")
    assert not store.finish(a["id"], "failed")  # a finished job does not change again
    assert store.cancel(b["id"]) == "running"
    assert not store.finish(b["id"], "succeeded")  # the cancel won
    assert [store.job(j["id"])["status"] for j in (a, b, c)] == ["succeeded", "cancelled", "cancelled"]  # type: ignore[index]

    for i in range(5):
        store.add_event(a["id"], f"event {i}", {"i": i})
    newest = store.events(a["id"], limit=3)
    assert [e["message"] for e in newest] == ["event 4", "event 3", "event 2"]
    older = store.events(a["id"], after=newest[-1]["seq"], limit=10)
    assert [e["message"] for e in older] == ["event 1", "event 0"]
    assert [e["data"]["i"] for e in store.events(a["id"], newest_first=False)] == [0, 1, 2, 3, 4]
    assert store.list_jobs(owner="bob", everyone=False) == []
    assert {j["id"] for j in store.list_jobs(owner="alice", everyone=False)} == {a["id"], b["id"], c["id"]}


def test_requeued_job_resumes_first_and_keeps_its_attempts(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'q.db'}")
    a, b = _job(store, "a"), _job(store, "b")
    assert store.claim("h", 1)["id"] == a["id"]  # type: ignore[index]
    assert store.requeue(a["id"])
    row = store.job(a["id"])
    assert row is not None and row["status"] == "queued" and row["resume"] and row["pid"] is None
    again = store.claim("h", 1)
    assert again is not None and again["id"] == a["id"] and again["attempts"] == 2  # oldest first, before b
    assert store.job(b["id"])["status"] == "queued"  # type: ignore[index]


def test_recover_requeues_a_dead_services_running_jobs_and_stops_their_live_workers(tmp_path: Path) -> None:
    """A service that died leaves jobs `running`: the next start stops a worker still alive (only a real
    worker of that job) and queues the job to resume from its checkpoint."""
    store = JobStore(f"sqlite:///{tmp_path / 'q.db'}")
    queue = JobQueue(store, JobsConfig(dir=str(tmp_path / "studio"), shutdown_timeout_s=30))
    dead, alive, stranger = _job(store, "dead"), _job(store, "alive"), _job(store, "stranger")
    # a stand-in worker: the command line the queue looks for, sleeping until it is stopped
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "tunelab.studio.worker",
                               alive["id"]])  # fmt: skip
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for job, pid in ((dead, 999_999_999), (alive, worker.pid), (stranger, unrelated.pid)):
            assert store.claim(queue.host, 3)["id"] == job["id"]  # type: ignore[index]
            store.set_pid(job["id"], pid)
        queue.recover()
        assert worker.wait(timeout=30) is not None  # stopped
        assert unrelated.poll() is None  # not a worker of that job: left alone
        for job in (dead, alive, stranger):
            row = store.job(job["id"])
            assert row is not None and row["status"] == "queued" and row["resume"], row
            assert "resumes from its last checkpoint" in store.events(job["id"])[0]["message"]
    finally:
        for p in (worker, unrelated):
            p.kill()
            p.wait()
