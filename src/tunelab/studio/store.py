"""The job queue's database (SQLAlchemy Core): SQLite by default, PostgreSQL by URL.

Four tables:
  jobs         one row per job: id, kind (fine_tuning: an OpenAI-style job; run: a config submitted from the
               studio or the CLI), owner (the API key id), status (queued, running, succeeded, failed,
               cancelled), the run config that trains (config_yaml), the OpenAI request fields (request),
               run_dir, fine_tuned_model, error, result_files, who runs it (host, pid), attempts, and
               `resume` (set when a service stopped or died while it ran: its next start resumes from the
               run's last checkpoint).
  job_events   job_id, seq (global order), created_at, level, type (message | metrics), message, data.
  files        uploads to /v1/files: id, filename, purpose, bytes, path on disk, the format the data toolkit
               read, its record count, owner.
  checkpoints  job_id, step, path, metrics at that step.

Times are Unix seconds (OpenAI's created_at). Status changes are conditional updates (`WHERE status = ...`),
so a cancel and a finishing worker cannot both win, and two services sharing a database cannot claim the same
job. SQLite runs in WAL mode with a busy timeout (the worker processes write events while the service reads);
failed operations that can pass (a locked database, a dropped connection) are retried with backoff.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from tunelab.errors import TunelabError
from tunelab.serve.store import NulSafeString, NulSafeText

T = TypeVar("T")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("owner", NulSafeString(128), nullable=True, index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("model", NulSafeString(512), nullable=False),
    Column("config_yaml", NulSafeText, nullable=False),
    Column("request", JSON, nullable=False),
    Column("run_dir", NulSafeText, nullable=False),
    Column("fine_tuned_model", NulSafeString(512), nullable=True),
    Column("error", JSON, nullable=True),
    Column("result_files", JSON, nullable=False),
    Column("host", String(256), nullable=True),
    Column("pid", Integer, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("resume", Boolean, nullable=False),
    Column("trained_tokens", Integer, nullable=True),
)

job_events = Table(
    "job_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("level", String(8), nullable=False),
    Column("type", String(16), nullable=False),
    Column("message", NulSafeText, nullable=False),
    Column("data", JSON, nullable=True),
)

files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("filename", NulSafeString(512), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("path", NulSafeText, nullable=False),
    Column("format", String(32), nullable=True),
    Column("records", Integer, nullable=True),
    Column("owner", NulSafeString(128), nullable=True, index=True),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("step", Integer, nullable=False),
    Column("path", NulSafeText, nullable=False),
    Column("metrics", JSON, nullable=True),
)


class StoreError(TunelabError):
    """A database operation that failed for good; the message names the table and the database's error."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class JobStore:
    def __init__(self, url: str, retries: int = 5, busy_timeout_ms: int = 10000) -> None:
        self.url, self.retries = url, retries
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, hide_parameters=True)
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine, busy_timeout_ms)
        self._retrying("schema", lambda: metadata.create_all(self.engine))

    # ------------------------------------------------------------------ jobs

    def create_job(self, *, kind: str, owner: str | None, model: str, config_yaml: str, run_dir: str,
                   request: dict[str, Any] | None = None, job_id: str | None = None,
                   fine_tuned_model: str | None = None) -> dict[str, Any]:  # fmt: skip
        row: dict[str, Any] = dict(
            id=job_id or new_id("ftjob"), kind=kind, owner=owner, status="queued", created_at=time.time(),
            model=model, config_yaml=config_yaml, request=request or {}, run_dir=run_dir,
            fine_tuned_model=fine_tuned_model, result_files=[], attempts=0, resume=False,
        )  # fmt: skip
        self._write("jobs", lambda c: c.execute(insert(jobs).values(**row)))
        return self.job(str(row["id"])) or row

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._read("jobs", select(jobs).where(jobs.c.id == job_id))
        return rows[0] if rows else None

    def list_jobs(self, owner: str | None = None, everyone: bool = True, after: str | None = None,
                  limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Newest first; `after` is the id of the last job of the previous page."""
        q = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        if not everyone:
            q = q.where(jobs.c.owner == owner)
        if kind is not None:
            q = q.where(jobs.c.kind == kind)
        if after is not None and (prev := self.job(after)) is not None:
            q = q.where(jobs.c.created_at < prev["created_at"])
        return self._read("jobs", q.limit(limit))

    def claim(self, host: str, max_running: int) -> dict[str, Any] | None:
        """The oldest queued job, now running on `host`; None when none waits or `host` runs enough already."""

        def claim(conn: Any) -> str | None:
            running = conn.execute(
                select(func.count()).select_from(jobs).where(and_(jobs.c.status == "running", jobs.c.host == host))
            ).scalar_one()
            if running >= max_running:
                return None
            q = select(jobs.c.id).where(jobs.c.status == "queued").order_by(jobs.c.created_at, jobs.c.id).limit(1)
            job_id = conn.execute(q).scalar()
            if job_id is None:
                return None
            done = conn.execute(
                update(jobs)
                .where(and_(jobs.c.id == job_id, jobs.c.status == "queued"))
                .values(status="running", host=host, pid=None, started_at=time.time(), attempts=jobs.c.attempts + 1)
            )
            return str(job_id) if done.rowcount == 1 else None

        job_id = self._write("jobs", claim)
        return self.job(job_id) if job_id else None

    def set_pid(self, job_id: str, pid: int) -> None:
        self._write("jobs", lambda c: c.execute(update(jobs).where(jobs.c.id == job_id).values(pid=pid)))

    def finish(self, job_id: str, status: str, **values: Any) -> bool:
        """running -> a final status (with error, fine_tuned_model, result_files...); False when it was no
        longer running (cancelled meanwhile)."""
        assert status in FINAL
        q = (
            update(jobs)
            .where(and_(jobs.c.id == job_id, jobs.c.status == "running"))
            .values(status=status, finished_at=time.time(), **values)
        )
        return bool(self._write("jobs", lambda c: c.execute(q).rowcount))

    def requeue(self, job_id: str) -> bool:
        """running -> queued with `resume` set: the service stopped or died while it ran."""
        q = (
            update(jobs)
            .where(and_(jobs.c.id == job_id, jobs.c.status == "running"))
            .values(status="queued", resume=True, pid=None, host=None)
        )
        return bool(self._write("jobs", lambda c: c.execute(q).rowcount))

    def cancel(self, job_id: str) -> str | None:
        """queued/running -> cancelled; returns the status it had (None: it had already ended)."""

        def cancel(conn: Any) -> str | None:
            for before in ACTIVE:
                q = (
                    update(jobs)
                    .where(and_(jobs.c.id == job_id, jobs.c.status == before))
                    .values(status="cancelled", finished_at=time.time())
                )
                if conn.execute(q).rowcount == 1:
                    return before
            return None

        return self._write("jobs", cancel)

    def update_job(self, job_id: str, **values: Any) -> None:
        self._write("jobs", lambda c: c.execute(update(jobs).where(jobs.c.id == job_id).values(**values)))

    def running_on(self, host: str) -> list[dict[str, Any]]:
        return self._read("jobs", select(jobs).where(and_(jobs.c.status == "running", jobs.c.host == host)))

    def succeeded_models(self) -> list[dict[str, Any]]:
        q = select(jobs).where(and_(jobs.c.status == "succeeded", jobs.c.fine_tuned_model.is_not(None)))
        return self._read("jobs", q.order_by(jobs.c.created_at))

    # ------------------------------------------------------------------ events, checkpoints

    def add_event(self, job_id: str, message: str, data: dict[str, Any] | None = None, level: str = "info",
                  type_: str = "message") -> None:  # fmt: skip
        row = dict(job_id=job_id, created_at=time.time(), level=level, type=type_, message=message,
                   data=json.loads(json.dumps(data, default=str)) if data is not None else None)  # fmt: skip
        self._write("job_events", lambda c: c.execute(insert(job_events).values(**row)))

    def events(self, job_id: str, after: int | None = None, limit: int = 20, newest_first: bool = True
               ) -> list[dict[str, Any]]:  # fmt: skip
        """Newest first (OpenAI's order), those before event `after` (an older page); oldest first otherwise,
        those after `after`."""
        q = select(job_events).where(job_events.c.job_id == job_id)
        if newest_first:
            q = q.where(job_events.c.seq < after) if after is not None else q
            q = q.order_by(job_events.c.seq.desc())
        else:
            q = q.where(job_events.c.seq > after) if after is not None else q
            q = q.order_by(job_events.c.seq)
        return self._read("job_events", q.limit(limit))

    def add_checkpoint(self, job_id: str, step: int, path: str, metrics: dict[str, Any] | None) -> None:
        row: dict[str, Any] = dict(job_id=job_id, created_at=time.time(), step=step, path=path, metrics=metrics)
        self._write("checkpoints", lambda c: c.execute(insert(checkpoints).values(**row)))

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        q = select(checkpoints).where(checkpoints.c.job_id == job_id).order_by(checkpoints.c.step.desc())
        return self._read("checkpoints", q)

    # ------------------------------------------------------------------ files

    def add_file(self, **values: Any) -> dict[str, Any]:
        row = {"id": new_id("file"), "created_at": time.time(), **values}
        self._write("files", lambda c: c.execute(insert(files).values(**row)))
        return row

    def file(self, file_id: str) -> dict[str, Any] | None:
        rows = self._read("files", select(files).where(files.c.id == file_id))
        return rows[0] if rows else None

    def list_files(self, owner: str | None, everyone: bool, purpose: str | None = None) -> list[dict[str, Any]]:
        q = select(files).order_by(files.c.created_at.desc())
        if not everyone:
            q = q.where(files.c.owner == owner)
        if purpose:
            q = q.where(files.c.purpose == purpose)
        return self._read("files", q)

    def delete_file(self, file_id: str) -> None:
        self._write("files", lambda c: c.execute(files.delete().where(files.c.id == file_id)))

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ plumbing

    def _read(self, table: str, query: Any) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            with self.engine.connect() as conn:
                return [dict(r) for r in conn.execute(query).mappings()]

        return self._retrying(table, read)

    def _write(self, table: str, fn: Callable[[Any], T]) -> T:
        def write() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return self._retrying(table, write)

    def _retrying(self, table: str, fn: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (OperationalError, InterfaceError) as e:  # locked, busy, connection dropped: may pass
                if attempt == self.retries:
                    raise StoreError(_describe(table, e, attempt + 1)) from None
                time.sleep(min(2.0, 0.05 * 2**attempt))
            except DBAPIError as e:  # a constraint or a value the database refuses: retrying cannot help
                raise StoreError(_describe(table, e, attempt + 1)) from None
        raise AssertionError("unreachable")


def _describe(table: str, e: DBAPIError, attempts: int) -> str:
    orig = e.orig if e.orig is not None else e
    first = (str(orig).strip().splitlines() or [""])[0][:200]
    return f"job queue: {table}: failed after {attempts} attempt(s): {type(orig).__name__}: {first}"


def _sqlite_pragmas(engine: Any, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # the workers write events while the service reads
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
