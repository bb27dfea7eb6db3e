"""POST /v1/feedback: a rating (and optionally a better answer) for one of the caller's own requests."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends

from tunelab.serve import schemas as S
from tunelab.serve.deps import get_state, rate_limited
from tunelab.serve.errors import ApiError
from tunelab.serve.state import ServerState
from tunelab.serve.store import StoreError

router = APIRouter(tags=["feedback"])


@router.post("/v1/feedback")
async def feedback(
    body: S.FeedbackRequest, key_id: str | None = Depends(rate_limited), state: ServerState = Depends(get_state)
) -> dict[str, Any]:
    store, recorder = state.store, state.recorder
    if store is None or recorder is None:
        raise ApiError(503, "feedback needs request logging (store.enabled: true in the serve config)")
    if (pending := recorder.pending(body.request_id)) is not None:
        await recorder.stored(pending)  # its row is still being written
    try:
        row = await asyncio.to_thread(store.request, body.request_id)
        if row is None or row["api_key_id"] != key_id:  # a key rates only its own requests
            raise ApiError(404, f"no request {body.request_id!r} for this key", code="request_not_found")
        corrected, comment = body.corrected, body.comment
        if state.cfg.store.redact_pii:
            corrected, comment = state.guard.redact_record(corrected), state.guard.redact_record(comment)
        fid = await asyncio.to_thread(store.add_feedback, body.request_id, body.rating, corrected, comment)
    except StoreError as e:
        state.metrics.store_failures.labels("feedback").inc()
        raise ApiError(503, f"{e}; the feedback was not stored, retry", "server_error", "store_unavailable") from None
    return {"id": fid, "request_id": body.request_id, "object": "feedback"}
