"""FastAPI dependencies shared by the routers: the server state, the caller's key, the rate limit, admin
rights and a request context (request id, key, endpoint, start time).

Order for an API route: key (401) -> rate limit (429 + Retry-After) -> body validation (400) -> route.
They are `async def` although none awaits: FastAPI runs a plain `def` dependency in a worker thread, and
four thread hops per request cost more than the checks themselves (and contend for the GIL with the engine).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import Depends, Request

from tunelab.serve.errors import ApiError
from tunelab.serve.state import ServerState


async def get_state(request: Request) -> ServerState:
    return request.app.state.tunelab


async def caller(request: Request, state: ServerState = Depends(get_state)) -> str | None:
    """The key id of the bearer token; 401 when the server has keys and this is not one of them."""
    key_id = state.keys.identify(request.headers.get("authorization"))
    if key_id is None and not state.keys.open:
        raise ApiError(401, "invalid or missing API key", "authentication_error", "invalid_api_key")
    return key_id


async def rate_limited(key_id: str | None = Depends(caller), state: ServerState = Depends(get_state)) -> str | None:
    wait = state.limiter.take(key_id or "anonymous")
    if wait > 0:
        state.metrics.rate_limited.labels(key_id or "anonymous").inc()
        raise ApiError(
            429,
            f"rate limit exceeded; retry in {wait:.1f}s",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers={"retry-after": str(int(wait) + 1)},
        )
    return key_id


async def admin(key_id: str | None = Depends(rate_limited), state: ServerState = Depends(get_state)) -> str | None:
    if not state.keys.open and key_id not in state.keys.admin_ids:
        raise ApiError(403, "this key may not manage the server", "permission_error")
    return key_id


async def is_admin(request: Request, state: ServerState = Depends(get_state)) -> bool:
    """Whether the caller holds an admin key (an open server counts everyone); never refuses."""
    return state.keys.open or state.keys.identify(request.headers.get("authorization")) in state.keys.admin_ids


@dataclass
class RequestContext:
    request_id: str
    key_id: str | None
    endpoint: str
    start: float


async def context(request: Request, key_id: str | None = Depends(rate_limited)) -> RequestContext:
    return RequestContext(request.state.request_id, key_id, request.url.path, time.perf_counter())
