"""GET /health (liveness for everyone; details for admin keys or with `public_health`) and GET /metrics
(Prometheus; it names key ids, so admin keys only unless `public_metrics`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tunelab.serve.deps import get_state, is_admin
from tunelab.serve.errors import ApiError
from tunelab.serve.state import ServerState

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health(state: ServerState = Depends(get_state), privileged: bool = Depends(is_admin)) -> dict[str, Any]:
    if not (privileged or state.cfg.public_health):
        return {"status": "ok"}
    recorder = state.recorder
    return {
        "status": "ok",
        "models": state.served(),
        "in_flight": {m: n for m, n in state.inflight.items() if n},
        "store": None if recorder is None else {"queued": recorder.queue.qsize(), "url": _safe(state)},
    }


def _safe(state: ServerState) -> str:
    """The store URL without its password."""
    assert state.store is not None
    return state.store.engine.url.render_as_string(hide_password=True)


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request, state: ServerState = Depends(get_state), privileged: bool = Depends(is_admin)
) -> Response:
    if not (privileged or state.cfg.public_metrics):
        if state.keys.identify(request.headers.get("authorization")) is None:
            raise ApiError(401, "/metrics needs an admin key", "authentication_error", "invalid_api_key")
        raise ApiError(403, "/metrics needs an admin key (or public_metrics: true)", "permission_error")
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
