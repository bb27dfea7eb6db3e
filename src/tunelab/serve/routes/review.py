"""/admin/review: the review queue over HTTP (admin keys only: reviewers read every user's interactions).

GET  /admin/review/items            the queue, filtered and paged (query parameters below)
GET  /admin/review/items/{id}       one item with every decision made on it
POST /admin/review/items/{id}       a decision: {decision: approve|edit|reject|skip, answer?, note?, reviewer?}
GET  /admin/review/stats            counts (feedback, ratings, decisions, flags, per model), same filters

Filters: rating (-1/0/1), feedback (true/false), model, adapter (`base` for none), since/until (ISO 8601),
flag (a substring of a guard flag), decision, unreviewed (true/false); paging: limit, offset, order
(oldest|newest). The reviewer recorded is the body's `reviewer`, else the key id; the key id is kept too.
The storage is tunelab.serve.review (the same queue `tunelab feedback review` works on in a terminal).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from tunelab.serve.deps import admin, get_state
from tunelab.serve.errors import ApiError
from tunelab.serve.review import NotInQueue, QueueFilter, ReviewError, ReviewQueue, queue_for
from tunelab.serve.state import ServerState
from tunelab.serve.store import StoreError

router = APIRouter(tags=["review"], prefix="/admin/review")


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "edit", "reject", "skip"] = Field(description="What the reviewer decided.")
    answer: str | None = Field(None, max_length=65536, description="The better answer (edit only).")
    note: str | None = Field(None, max_length=4000, description="Free text for the record.")
    reviewer: str | None = Field(None, max_length=128, description="Who decided; default: the key id.")


def filters(
    rating: int | None = Query(None, ge=-1, le=1),
    feedback: bool | None = None,
    model: str | None = None,
    adapter: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    flag: str | None = None,
    decision: Literal["approve", "edit", "reject", "skip"] | None = None,
    unreviewed: bool = False,
) -> QueueFilter:
    return QueueFilter(rating, feedback, model, adapter, since, until, flag, decision, unreviewed)


def queue(state: ServerState = Depends(get_state)) -> ReviewQueue:
    if state.store is None:
        raise ApiError(503, "review needs request logging (store.enabled: true in the serve config)")
    return queue_for(state.store)


@router.get("/items")
async def items(
    filt: QueueFilter = Depends(filters),
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    order: Literal["oldest", "newest"] = "oldest",
    key_id: str | None = Depends(admin),
    q: ReviewQueue = Depends(queue),
) -> dict[str, Any]:
    data = await _db(q.items, filt, limit, offset, order == "newest")
    return {"object": "list", "data": data, "limit": limit, "offset": offset}


@router.get("/items/{request_id}")
async def item(request_id: str, key_id: str | None = Depends(admin), q: ReviewQueue = Depends(queue)) -> dict:
    found = await _db(q.item, request_id)
    if found is None:
        raise ApiError(404, f"no answered request {request_id!r} in the store", code="request_not_found")
    return found | {"history": await _db(q.history, request_id)}


@router.post("/items/{request_id}")
async def decide(
    request_id: str, body: DecisionRequest, key_id: str | None = Depends(admin), q: ReviewQueue = Depends(queue)
) -> dict[str, Any]:
    reviewer = body.reviewer or key_id or "anonymous"
    return await _db(q.decide, request_id, body.decision, reviewer, body.answer, body.note, key_id)


@router.get("/stats")
async def stats(
    filt: QueueFilter = Depends(filters), key_id: str | None = Depends(admin), q: ReviewQueue = Depends(queue)
) -> dict[str, Any]:
    return await _db(q.stats, filt)


async def _db(fn: Any, *args: Any) -> Any:
    """A queue call off the event loop, its errors as API errors."""
    try:
        return await asyncio.to_thread(fn, *args)
    except NotInQueue as e:
        raise ApiError(404, str(e), code="request_not_found") from None
    except StoreError as e:
        raise ApiError(503, f"{e}; retry", "server_error", "store_unavailable") from None
    except ReviewError as e:
        raise ApiError(400, str(e)) from None
