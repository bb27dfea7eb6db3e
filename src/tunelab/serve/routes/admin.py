"""/admin/adapters: list, load (all-or-nothing) and unload (drained) LoRA adapters at runtime; admin keys only.

A load is validated before anything is registered (adapters.py: the folder, the safetensors file whole and
readable, its tensors' shapes against its config and the base model): a bad adapter is a 400 with the
reason and its name stays free. An unload first stops new requests for the adapter (404), waits up to
`limits.drain_timeout_s` for those in flight, then ends the rest (they stop at their next token and get a
410 `model_unloaded` error, an error event when streamed; their rows say status 410, finish_reason
cancelled) and unloads.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends

from tunelab.serve import schemas as S
from tunelab.serve.adapters import validate_adapter
from tunelab.serve.deps import admin, get_state
from tunelab.serve.errors import ApiError
from tunelab.serve.security import check_adapter_path
from tunelab.serve.state import ServerState

log = logging.getLogger("tunelab.serve")
router = APIRouter(tags=["admin"], prefix="/admin")


@router.get("/adapters")
async def adapters(key_id: str | None = Depends(admin), state: ServerState = Depends(get_state)) -> dict[str, Any]:
    return {"base": state.base, "adapters": state.served()[1:]}


@router.post("/adapters")
async def load(
    body: S.AdapterRequest, key_id: str | None = Depends(admin), state: ServerState = Depends(get_state)
) -> dict[str, Any]:
    if body.name in state.engine.model_ids():
        raise ApiError(409, f"model id {body.name!r} is already in use; unload it first", code="name_in_use")
    path = check_adapter_path(body.path, state.cfg.adapter_dirs)
    validate_adapter(path, getattr(state.engine, "model", None))
    await state.engine.load_adapter(body.name, path)
    log.info("key %s loaded adapter %s from %s", key_id, body.name, path)
    return {"loaded": body.name, "models": state.served()}


@router.delete("/adapters/{name}")
async def unload(name: str, key_id: str | None = Depends(admin), state: ServerState = Depends(get_state)) -> dict:
    if name not in state.engine.model_ids()[1:] or name in state.unloading:
        raise ApiError(404, f"no adapter named {name!r}", code="model_not_found")
    state.unloading.add(name)
    try:
        drained = await state.drain(name, state.cfg.limits.drain_timeout_s)
        if not drained:  # end the rest: each stops at its next token and answers with an error
            state.abort(name, f"adapter {name!r} was unloaded while this request was generating")
            await state.drain(name, 60)
        await state.engine.unload_adapter(name)
    finally:
        state.unloading.discard(name)
    log.info("key %s unloaded adapter %s (%s)", key_id, name, "drained" if drained else "in-flight requests ended")
    return {"unloaded": name, "drained": drained, "models": state.served()}
