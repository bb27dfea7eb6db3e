"""The server's routers, one per concern; `app.assemble` mounts any subset of them on a FastAPI app.

Each is a FastAPI `APIRouter` built on the shared schemas (schemas.py) and dependencies (deps.py), so a
router can be tested alone: mount it with `assemble(state, {"models": ROUTERS["models"]})`.
"""

from __future__ import annotations

from fastapi import APIRouter

from tunelab.serve.routes import admin, chat, completions, feedback, models, ops, review

ROUTERS: dict[str, APIRouter] = {
    "chat": chat.router,
    "completions": completions.router,
    "models": models.router,
    "feedback": feedback.router,
    "admin": admin.router,
    "ops": ops.router,
    "review": review.router,
}
