"""The FastAPI app: OpenAI-compatible completions over an `Engine`, with keys, limits, guard and logging.

`create_app` builds the shared state (state.py) and mounts every router (routes/): chat, completions,
models, feedback, admin, ops (health, metrics) and review (the review queue). `assemble` mounts any subset on a fresh app, which is
how a router is tested alone. Two ASGI middlewares wrap everything: the body-size limit (413 before any
parsing) and the request id (`x-request-id` on every response; it is the key for `POST /v1/feedback`).
Every error is in OpenAI's shape (errors.py). On shutdown the store's queue is written out, then the
engine closes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from tunelab.serve import errors
from tunelab.serve.config import ServeConfig
from tunelab.serve.engine import Engine
from tunelab.serve.routes import ROUTERS
from tunelab.serve.security import BodyLimit, KeyRing
from tunelab.serve.state import ServerState
from tunelab.serve.store import Store


class RequestId:
    """ASGI middleware: a fresh id per request, in request.state and the `x-request-id` response header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = "req-" + uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def assemble(state: ServerState, routers: Mapping[str, APIRouter] = ROUTERS) -> FastAPI:
    """A FastAPI app serving `routers` over `state`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if state.recorder is not None:
            await asyncio.to_thread(state.recorder.close)  # write out what is queued
        await state.engine.close()

    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=state.cfg.limits.max_body_bytes)
    app.add_middleware(RequestId)
    app.state.tunelab = state
    errors.install(app)
    for router in routers.values():
        app.include_router(router)
    return app


def create_app(engine: Engine, cfg: ServeConfig, keys: KeyRing, store: Store | None = None,
               routers: Mapping[str, APIRouter] | None = None) -> FastAPI:  # fmt: skip
    """The server's app: every router of ROUTERS, plus `routers` mounted from above (the studio's jobs API)."""
    app = assemble(ServerState.build(engine, cfg, keys, store), {**ROUTERS, **(routers or {})})
    app.state.engine, app.state.store, app.state.metrics = engine, store, app.state.tunelab.metrics
    return app
