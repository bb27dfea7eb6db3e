"""Request, guard-decision and feedback logging with SQLAlchemy Core: SQLite by default, PostgreSQL by URL.

Three tables (documented in docs/serving.md; a later review/retraining step reads them):
  requests     one row per completion request: id (the x-request-id), created_at, api_key_id, endpoint,
               model (the model id asked for), adapter (null for the base), request_json (the request as
               the model saw it, i.e. after input redaction), response_text (after output redaction),
               finish_reason, prompt_tokens, completion_tokens, latency_ms, status (HTTP), guard_flags
               (JSON list of "stage:rule:action").
  guard_events one row per guard decision: request_id, created_at, stage, rule, action, detail.
  feedback     request_id, rating (-1 bad, 0 neutral, 1 good), corrected (a better answer, optional),
               comment, created_at. Several feedback rows per request are allowed (latest wins in review).
Timestamps are UTC. Writes are synchronous and short; the app calls them off the event loop.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
)

from tunelab.serve.guard import Decision

metadata = MetaData()

requests_table = Table(
    "requests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("api_key_id", String(128), nullable=True, index=True),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(256), nullable=False),
    Column("adapter", String(256), nullable=True),
    Column("request_json", JSON, nullable=False),
    Column("response_text", Text, nullable=True),
    Column("finish_reason", String(32), nullable=True),
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
    Column("request_id", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("rule", String(32), nullable=False),
    Column("action", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)

feedback_table = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("requests.id"), nullable=False, index=True),
    Column("rating", Integer, nullable=False),
    Column("corrected", Text, nullable=True),
    Column("comment", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def default_url() -> str:
    home = Path(os.environ.get("TUNELAB_HOME", Path.home() / ".tunelab"))
    return f"sqlite:///{home / 'serve.db'}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        if self.url.startswith("sqlite:///"):
            Path(self.url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(self.url)
        metadata.create_all(self.engine)

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
    ) -> None:
        now = _now()
        flags = [f"{d.stage}:{d.rule}:{d.action}" for d in decisions]
        with self.engine.begin() as conn:
            conn.execute(
                insert(requests_table).values(
                    id=request_id,
                    created_at=now,
                    api_key_id=api_key_id,
                    endpoint=endpoint,
                    model=model,
                    adapter=adapter,
                    request_json=json.loads(json.dumps(request)),
                    response_text=response_text,
                    finish_reason=finish_reason,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    latency_ms=latency_ms,
                    status=status,
                    guard_flags=flags,
                )
            )
            if decisions:
                conn.execute(
                    insert(guard_events_table),
                    [dict(request_id=request_id, created_at=now, **d.as_dict()) for d in decisions],
                )

    def has_request(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            q = select(requests_table.c.id).where(requests_table.c.id == request_id)
            return conn.execute(q).first() is not None

    def add_feedback(self, request_id: str, rating: int, corrected: str | None, comment: str | None) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                insert(feedback_table).values(
                    request_id=request_id,
                    rating=rating,
                    corrected=corrected,
                    comment=comment,
                    created_at=_now(),
                )
            )
            key = result.inserted_primary_key
            assert key is not None  # an INSERT of one row always has one
            return int(key[0])

    def request(self, request_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(requests_table).where(requests_table.c.id == request_id)).mappings().first()
            return dict(row) if row else None

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
