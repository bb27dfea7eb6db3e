"""The review queue: logged interactions with their user feedback, and the decisions reviewers make on them.

A reviewer reads an interaction (prompt, answer, guard flags, every feedback row) and decides: `approve` (the
answer is good as it is), `edit` (the reviewer writes the better answer), `reject` (the answer is bad and no
better one is given) or `skip` (look again later). Decisions live in the `reviews` table of the serve store,
beside `requests` and `feedback` (same database, SQLite or PostgreSQL, same NUL-safe text and retries); every
decision is kept with its reviewer and time, and the latest one per request counts. Only answered requests
(status 200) are in the queue: a refused request has no answer to judge.

Filters (`QueueFilter`): the latest user rating, whether there is user feedback, the model id asked for, the
adapter (`base` for none), a time window, a guard flag (a substring of `stage:rule:action`, e.g. `pii` or
`input:injection`), the latest decision, and `unreviewed` (no approve/edit/reject yet; a skip leaves an item in
the queue). Time and model filters run in SQL; the rest on pages of rows read in order, so a filtered page
costs at most the rows it scans. One queue serves the HTTP API (routes/review.py: what the web UI calls), the
terminal review (`tunelab feedback review`) and the export (tunelab.feedback.export).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert, select

from tunelab.errors import TunelabError
from tunelab.serve.store import NulSafeString, NulSafeText, Store, feedback_table, requests_table

DECISIONS = ("approve", "edit", "reject", "skip")
DONE = ("approve", "edit", "reject")  # decisions that take an item out of the queue
PAGE = 500

review_metadata = MetaData()
reviews_table = Table(
    "reviews",
    review_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", NulSafeString(64), nullable=False, index=True),
    Column("decision", String(16), nullable=False),
    Column("answer", NulSafeText, nullable=True),  # the reviewer's answer (edit)
    Column("reviewer", NulSafeString(128), nullable=False),
    Column("key_id", NulSafeString(128), nullable=True),  # the API key that made it, through the HTTP API
    Column("note", NulSafeText, nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=False, index=True),
)


class ReviewError(TunelabError):
    """A decision that cannot be stored as given (an unknown decision, an edit without an answer)."""


class NotInQueue(ReviewError):
    """No answered request with that id."""


@dataclass(frozen=True)
class QueueFilter:
    rating: int | None = None  # the latest user rating (-1, 0, 1)
    feedback: bool | None = None  # True: has user feedback; False: has none
    model: str | None = None  # the model id the client asked for
    adapter: str | None = None  # the adapter that answered; "base" for none
    since: datetime | None = None
    until: datetime | None = None
    flag: str | None = None  # a substring of one of the guard flags
    decision: str | None = None  # the latest decision
    unreviewed: bool = False  # no approve/edit/reject yet

    def __post_init__(self) -> None:
        if self.rating is not None and self.rating not in (-1, 0, 1):
            raise ReviewError(f"filter rating: expected -1, 0 or 1, got {self.rating!r}")
        if self.decision is not None and self.decision not in DECISIONS:
            raise ReviewError(f"filter decision: expected one of {', '.join(DECISIONS)}, got {self.decision!r}")

    def keeps(self, item: dict[str, Any]) -> bool:
        """The filters that run on a built item (the SQL ones already ran)."""
        review = item["review"]
        checks = (
            self.rating is None or item["rating"] == self.rating,
            self.feedback is None or bool(item["feedback"]) == self.feedback,
            self.flag is None or any(self.flag in f for f in item["guard_flags"]),
            self.decision is None or (review is not None and review["decision"] == self.decision),
            not self.unreviewed or review is None or review["decision"] not in DONE,
        )
        return all(checks)


def utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (SQLite hands back naive ones, stored as UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def iso(value: datetime | None) -> str | None:
    v = utc(value)
    return None if v is None else v.isoformat()


class ReviewQueue:
    """The queue over one store; `queue_for(store)` shares one per store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.retrying("reviews", "-", lambda: review_metadata.create_all(store.engine))

    # ------------------------------------------------------------------ reading

    def items(self, filt: QueueFilter | None = None, limit: int = 50, offset: int = 0,
              newest_first: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Up to `limit` items that pass `filt`, after skipping `offset` of them, oldest first by default."""
        out = []
        for i, item in enumerate(self.scan(filt or QueueFilter(), newest_first)):
            if i >= offset + limit:
                break
            if i >= offset:
                out.append(item)
        return out

    def item(self, request_id: str) -> dict[str, Any] | None:
        with self.store.engine.connect() as conn:
            q = select(requests_table).where(requests_table.c.id == request_id, requests_table.c.status == 200)
            row = conn.execute(q).mappings().first()
        return None if row is None else self._build([dict(row)])[0]

    def scan(self, filt: QueueFilter, newest_first: bool = False) -> Iterator[dict[str, Any]]:
        """Every item passing `filt`, in time order, read a page at a time."""
        t = requests_table
        q = select(t).where(t.c.status == 200)
        if filt.since is not None:
            q = q.where(t.c.created_at >= utc(filt.since))
        if filt.until is not None:
            q = q.where(t.c.created_at < utc(filt.until))
        if filt.model is not None:
            q = q.where(t.c.model == filt.model)
        if filt.adapter is not None:
            q = q.where(t.c.adapter.is_(None) if filt.adapter == "base" else t.c.adapter == filt.adapter)
        order = (t.c.created_at.desc(), t.c.id.desc()) if newest_first else (t.c.created_at, t.c.id)
        start = 0
        while True:
            with self.store.engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(q.order_by(*order).limit(PAGE).offset(start)).mappings()]
            yield from (it for it in self._build(rows) if filt.keeps(it))
            if len(rows) < PAGE:
                return
            start += PAGE

    def history(self, request_id: str) -> list[dict[str, Any]]:
        """Every decision on one request, oldest first."""
        with self.store.engine.connect() as conn:
            q = select(reviews_table).where(reviews_table.c.request_id == request_id).order_by(reviews_table.c.id)
            return [_decision(dict(r)) for r in conn.execute(q).mappings()]

    def stats(self, filt: QueueFilter | None = None) -> dict[str, Any]:
        """Counts over the items passing `filt`: feedback, ratings, decisions, flags, per model."""
        out: dict[str, Any] = {"items": 0, "with_feedback": 0, "corrected": 0, "unreviewed": 0,
                               "ratings": {"-1": 0, "0": 0, "1": 0}, "decisions": dict.fromkeys(DECISIONS, 0),
                               "flagged": 0, "models": {}}  # fmt: skip
        for it in self.scan(filt or QueueFilter()):
            out["items"] += 1
            out["with_feedback"] += bool(it["feedback"])
            out["corrected"] += it["corrected"] is not None
            out["flagged"] += bool(it["guard_flags"])
            if it["rating"] is not None:
                out["ratings"][str(it["rating"])] += 1
            review = it["review"]
            if review is not None:
                out["decisions"][review["decision"]] += 1
            out["unreviewed"] += review is None or review["decision"] not in DONE
            out["models"][it["model"]] = out["models"].get(it["model"], 0) + 1
        with self.store.engine.connect() as conn:
            out["requests"] = int(conn.execute(select(func.count()).select_from(requests_table)).scalar_one())
        return out

    # ------------------------------------------------------------------ deciding

    def decide(self, request_id: str, decision: str, reviewer: str, answer: str | None = None,
               note: str | None = None, key_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Store a decision; returns it. An edit needs the better answer; other decisions take none."""
        if decision not in DECISIONS:
            raise ReviewError(f"decision: expected one of {', '.join(DECISIONS)}, got {decision!r}")
        if decision == "edit" and not (answer or "").strip():
            raise ReviewError("decision edit: the reviewer's answer is missing (field answer)")
        if decision != "edit" and answer is not None:
            raise ReviewError(f"decision {decision}: only an edit carries an answer (field answer)")
        if not reviewer.strip():
            raise ReviewError("reviewer: expected a name")
        if self.item(request_id) is None:
            raise NotInQueue(f"no answered request {request_id!r} in the store")
        row = dict(request_id=request_id, decision=decision, answer=answer, reviewer=reviewer, key_id=key_id,
                   note=note, decided_at=datetime.now(timezone.utc))  # fmt: skip

        def write() -> int:
            with self.store.engine.begin() as conn:
                key = conn.execute(insert(reviews_table).values(**row)).inserted_primary_key
                assert key is not None
                return int(key[0])

        rid = self.store.retrying("reviews", request_id, write)
        return _decision({**row, "id": rid})

    # ------------------------------------------------------------------ building items

    def _build(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items of request rows, each with its feedback rows and its latest decision (two queries a page)."""
        ids = [r["id"] for r in rows]
        feedback: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        latest: dict[str, dict[str, Any]] = {}
        if ids:
            with self.store.engine.connect() as conn:
                fq = select(feedback_table).where(feedback_table.c.request_id.in_(ids)).order_by(feedback_table.c.id)
                for f in conn.execute(fq).mappings():
                    feedback[f["request_id"]].append(_feedback(dict(f)))
                rq = select(reviews_table).where(reviews_table.c.request_id.in_(ids)).order_by(reviews_table.c.id)
                for r in conn.execute(rq).mappings():
                    latest[r["request_id"]] = _decision(dict(r))
        return [_item(r, feedback[r["id"]], latest.get(r["id"])) for r in rows]


def _item(row: dict[str, Any], feedback: list[dict[str, Any]], review: dict[str, Any] | None) -> dict[str, Any]:
    request = row["request_json"] or {}
    corrected = next((f["corrected"] for f in reversed(feedback) if f["corrected"]), None)
    return {
        "request_id": row["id"],
        "created_at": iso(row["created_at"]),
        "endpoint": row["endpoint"],
        "model": row["model"],
        "adapter": row["adapter"],
        "prompt": request.get("messages", request.get("prompt")),
        "answer": row["response_text"],
        "finish_reason": row["finish_reason"],
        "guard_flags": list(row["guard_flags"] or []),
        "feedback": feedback,
        "rating": feedback[-1]["rating"] if feedback else None,  # the latest rating counts
        "corrected": corrected,  # the latest better answer a user gave
        "review": review,
    }


def _feedback(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("rating", "corrected", "comment")} | {"created_at": iso(row["created_at"])}


def _decision(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "request_id", "decision", "answer", "reviewer", "note")} | {
        "decided_at": iso(row["decided_at"])
    }


_QUEUES: weakref.WeakKeyDictionary[Store, ReviewQueue] = weakref.WeakKeyDictionary()


def queue_for(store: Store) -> ReviewQueue:
    """The queue of `store` (its table is created once per store)."""
    if store not in _QUEUES:
        _QUEUES[store] = ReviewQueue(store)
    return _QUEUES[store]
