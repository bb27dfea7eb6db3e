"""The studio server: the OpenAI-compatible server over a base model (tunelab.api.create_app) with the
studio's routers mounted beside its own (/v1/files, /v1/fine_tuning/jobs, and the web UI under /studio),
and the job queue started and stopped with it.

Uploads to /v1/files are answered by a small app of their own, with `files.max_bytes` as its body limit
(the rest of the API keeps the serve config's smaller one); `StudioApp` routes that one request there. It
also hooks the ASGI lifespan: the queue starts (resuming the jobs a previous run left) before the server
takes requests, and on shutdown the running jobs save a checkpoint before the engine closes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from tunelab import api
from tunelab.models.loader import resolve
from tunelab.serve import errors
from tunelab.serve.app import RequestId
from tunelab.serve.security import BodyLimit
from tunelab.serve.state import ServerState
from tunelab.studio import files, jobs, ui
from tunelab.studio.config import StudioConfig
from tunelab.studio.service import Studio

log = logging.getLogger("tunelab.studio")


class StudioApp:
    """ASGI: uploads to their own app, everything else to the server's; the queue follows the lifespan."""

    def __init__(self, main: FastAPI, upload: FastAPI, studio: Studio) -> None:
        self.main, self.upload, self.studio = main, upload, studio
        self.state = main.state  # app.state.tunelab (the server) and app.state.studio, as on any tunelab app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self.main(scope, self._lifespan(receive), send)
        if scope["type"] == "http" and scope["path"] == "/v1/files" and scope["method"] == "POST":
            return await self.upload(scope, receive, send)
        return await self.main(scope, receive, send)

    def _lifespan(self, receive: Any) -> Any:
        async def hooked() -> dict:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.to_thread(self.studio.start)
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.studio.stop)
            return dict(message)

        return hooked


def build(target: str | Path, cfg: StudioConfig | None = None, adapters: dict[str, str] | None = None) -> StudioApp:
    """The studio over `target` (a preset, a model folder, a hub id or a run directory: the base model that
    is served and that jobs fine-tune)."""
    cfg = cfg or StudioConfig()
    routers: dict[str, Any] = {"files": files.router, "fine_tuning": jobs.router}
    if cfg.ui:
        routers["studio"] = ui.router
    main = api.create_app(target, cfg.serve, adapters, routers)
    state: ServerState = main.state.tunelab
    studio = Studio(cfg, state.engine, resolve(target).base, state.keys)
    main.state.studio = studio
    return StudioApp(main, upload_app(state, studio, cfg.files.max_bytes), studio)


def upload_app(state: ServerState, studio: Studio, limit: int) -> FastAPI:
    app = FastAPI(title="tunelab files", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, limit=limit)
    app.add_middleware(RequestId)
    app.state.tunelab, app.state.studio = state, studio
    errors.install(app)
    app.include_router(files.upload_router)
    return app


def serve(target: str, cfg: StudioConfig, adapters: dict[str, str] | None = None) -> None:
    """Build the studio and serve it until interrupted (`tunelab studio`)."""
    app = build(target, cfg, adapters)
    log.info("tunelab studio on http://%s:%d/studio (serving %s; jobs fine-tune it)", cfg.serve.host,
             cfg.serve.port, ", ".join(app.studio.engine.model_ids()))  # fmt: skip
    uvicorn.run(app, host=cfg.serve.host, port=cfg.serve.port, log_level="info")
