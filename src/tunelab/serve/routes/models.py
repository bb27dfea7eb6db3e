"""GET /v1/models and GET /v1/models/{model_id}: the base model and the loaded adapters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from tunelab.serve import schemas as S
from tunelab.serve.deps import get_state, rate_limited
from tunelab.serve.errors import ApiError
from tunelab.serve.state import ServerState

router = APIRouter(tags=["models"], dependencies=[Depends(rate_limited)])


@router.get("/v1/models")
async def list_models(state: ServerState = Depends(get_state)) -> dict[str, Any]:
    return {"object": "list", "data": [_card(state, m) for m in state.served()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: ServerState = Depends(get_state)) -> dict[str, Any]:
    if model_id not in state.served():
        served = ", ".join(state.served())
        raise ApiError(404, f"model {model_id!r} not found; served: {served}", code="model_not_found", param="model")
    return _card(state, model_id)


def _card(state: ServerState, model_id: str) -> dict[str, Any]:
    return S.model_card(model_id, None if model_id == state.base else state.base)
