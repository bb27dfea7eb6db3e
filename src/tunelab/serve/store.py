"""Request, guard-decision and feedback logging with SQLAlchemy Core: SQLite by default, PostgreSQL by URL.

Three tables (documented in docs/serving.md; a later review/retraining step reads them):
  requests     one row per completion request: id (the x-request-id), created_at, api_key_id, endpoint,
               model (the model id asked for), adapter (null for the base), request_json (the request as
               the model saw it, PII-redacted), response_text (the first choice's text, PII-redacted),
               choices_json (every choice when there are several), finish_reason, prompt_tokens,
               completion_tokens, latency_ms, status (HTTP; 499 when the client went away), guard_flags
               (JSON list of "stage:rule:action").
  guard_events one row per guard decision: request_id, created_at, stage, rule, action, detail.
  feedback     request_id, rating (-1 bad, 0 neutral, 1 good), corrected (a better answer, optional),
               comment, created_at. Several feedback rows per request are allowed (latest wins in review).
Timestamps are UTC. Writes are synchronous and short; the app calls them off the event loop (recorder.py).

Nothing lost: SQLite runs in WAL mode (readers never block the writer) with a busy timeout, and every
write is retried with backoff on errors that can pass (a locked database, a dropped connection); what
still fails raises `StoreError`, whose message names the table, the row id and the database's error, never
a value (the engine hides parameters, so no user text reaches a log). PostgreSQL text cannot hold NUL
(U+0000), so every text column is stored with a reversible escape there: U+E000 (a private-use
character) becomes U+E000 U+E000 and NUL becomes U+E000 "0"; reads undo it. Text with neither character,
i.e. nearly all text, is stored as it is. JSON columns need nothing: JSON writes NUL as the `\u0000`
escape, which PostgreSQL's `json` type keeps. Columns added by a newer version are added to an older
database at start (ALTER TABLE ... ADD COLUMN, all nullable).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.types import TypeDecorator

from tunelab.errors import TunelabError
from tunelab.serve.guard import Decision

log = logging.getLogger("tunelab.serve.store")
T = TypeVar("T")
ESC = "\ue000"
_ESCAPED = re.compile("\ue000(.)", re.DOTALL)


def escape_nul(value: str) -> str:
    return value.replace(ESC, ESC + ESC).replace("\x00", ESC + "0") if ("\x00" in value or ESC in value) else value


def unescape_nul(value: str) -> str:
    return _ESCAPED.sub(lambda m: "\x00" if m.group(1) == "0" else m.group(1), value) if ESC in value else value


class _NulSafe(TypeDecorator):
    """Text that PostgreSQL can hold whatever it contains (see the module docstring)."""

    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return escape_nul(value) if value is not None and dialect.name == "postgresql" else value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return unescape_nul(value) if value is not None and dialect.name == "postgresql" else value


class NulSafeText(_NulSafe):
    impl = Text
    cache_ok = True


class NulSafeString(_NulSafe):
    impl = String
    cache_ok = True


class StoreError(TunelabError):
    """A write that failed for good; the message holds no stored value."""


metadata = MetaData()

requests_table = Table(
    "requests",
    metadata,
    Column("id", NulSafeString(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("api_key_id", NulSafeString(128), nullable=True, index=True),
    Column("endpoint", NulSafeString(64), nullable=False),
    Column("model", NulSafeString(256), nullable=False),
    Column("adapter", NulSafeString(256), nullable=True),
    Column("request_json", JSON, nullable=False),
    Column("response_text", NulSafeText, nullable=True),
    Column("choices_json", JSON, nullable=True),
    Column("finish_reason", NulSafeString(32), nullable=True),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("latency_ms", Float, nullable=True),
    Column("status", Integer, nullable=False),
    Column("guard_flags", JSON, nullable=False),
)

guard_events_table = Table(
    "guard_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", NulSafeString(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("rule", String(32), nullable=False),
    Column("action", String(16), nullable=False),
    Column("detail", NulSafeText, nullable=False),
)

feedback_table = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", NulSafeString(64), ForeignKey("requests.id"), nullable=False, index=True),
    Column("rating", Integer, nullable=False),
    Column("corrected", NulSafeText, nullable=True),
    Column("comment", NulSafeText, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def default_url() -> str:
    home = Path(os.environ.get("TUNELAB_HOME", Path.home() / ".tunelab"))
    return f"sqlite:///{home / 'serve.db'}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    def __init__(
        self,
        url: str | None = None,
        retries: int = 5,
        busy_timeout_ms: int = 5000,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.url, self.retries, self.on_retry = url or default_url(), retries, on_retry
        if self.url.startswith("sqlite:///"):
            Path(self.url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(self.url, hide_parameters=True)
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine, busy_timeout_ms)
        self.retrying("schema", "-", lambda: _create_or_upgrade(self.engine))

    def log_request(
        self,
        request_id: str,
        *,
        api_key_id: str | None,
        endpoint: str,
        model: str,
        adapter: str | None,
        request: dict[str, Any],
        response_text: str | None,
        finish_reason: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        latency_ms: float,
        status: int,
        decisions: list[Decision],
        choices: list[dict[str, Any]] | None = None,
    ) -> None:
        now = _now()
        row = dict(
            id=request_id,
            created_at=now,
            api_key_id=api_key_id,
            endpoint=endpoint,
            model=model,
            adapter=adapter,
            request_json=json.loads(json.dumps(request)),
            response_text=response_text,
            choices_json=choices,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=latency_ms,
            status=status,
            guard_flags=[f"{d.stage}:{d.rule}:{d.action}" for d in decisions],
        )
        events = [dict(request_id=request_id, created_at=now, **d.as_dict()) for d in decisions]

        def write() -> None:
            with self.engine.begin() as conn:
                conn.execute(insert(requests_table).values(**row))
                if events:
                    conn.execute(insert(guard_events_table), events)

        self.retrying("requests", request_id, write)

    def has_request(self, request_id: str) -> bool:
        return self.request(request_id) is not None

    def add_feedback(self, request_id: str, rating: int, corrected: str | None, comment: str | None) -> int:
        values = dict(request_id=request_id, rating=rating, corrected=corrected, comment=comment, created_at=_now())

        def write() -> int:
            with self.engine.begin() as conn:
                key = conn.execute(insert(feedback_table).values(**values)).inserted_primary_key
                assert key is not None  # an INSERT of one row always has one
                return int(key[0])

        return self.retrying("feedback", request_id, write)

    def request(self, request_id: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            with self.engine.connect() as conn:
                q = select(requests_table).where(requests_table.c.id == request_id)
                row = conn.execute(q).mappings().first()
                return dict(row) if row else None

        return self.retrying("requests", request_id, read)

    def requests(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = select(requests_table).order_by(requests_table.c.created_at)
            return [dict(r) for r in conn.execute(q).mappings()]

    def feedback(self, request_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = select(feedback_table).where(feedback_table.c.request_id == request_id).order_by(feedback_table.c.id)
            return [dict(r) for r in conn.execute(q).mappings()]

    def guard_events(self, request_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = select(guard_events_table).where(guard_events_table.c.request_id == request_id)
            return [dict(r) for r in conn.execute(q).mappings()]

    def close(self) -> None:
        self.engine.dispose()

    def retrying(self, table: str, row_id: str, fn: Callable[[], T]) -> T:
        """`fn()` retried with backoff on errors that can pass; a `StoreError` naming table and row otherwise
        (also used by the review queue and the deployment registry, which share this database)."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (OperationalError, InterfaceError) as e:  # locked, busy, connection dropped: may pass
                if attempt == self.retries:
                    raise StoreError(_describe(table, row_id, e, attempt + 1)) from None
                if self.on_retry is not None:
                    self.on_retry(table)
                time.sleep(min(2.0, 0.05 * 2**attempt))
            except DBAPIError as e:  # a constraint or a value the database refuses: retrying cannot help
                raise StoreError(_describe(table, row_id, e, attempt + 1)) from None
        raise AssertionError("unreachable")


def _describe(table: str, row_id: str, e: DBAPIError, attempts: int) -> str:
    """The database's own message (its first line: later lines may quote values), no parameters."""
    orig = e.orig if e.orig is not None else e
    first = (str(orig).strip().splitlines() or [""])[0][:200]
    return f"store: {table} row {row_id} not written after {attempts} attempt(s): {type(orig).__name__}: {first}"


def _sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; one writer at a time
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL's safe setting: a power cut may lose the last commit only
        cur.close()


def _create_or_upgrade(engine: Engine) -> None:
    metadata.create_all(engine)
    have = inspect(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            present = {c["name"] for c in have.get_columns(table.name)}
            for col in table.columns:
                if col.name not in present and col.nullable:
                    kind = col.type.compile(dialect=engine.dialect)
                    conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}'))
