"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tunelab.serve import schemas as S
from tunelab.serve.deps import RequestContext, context, get_state
from tunelab.serve.routes.common import complete
from tunelab.serve.state import ServerState

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions")
async def chat_completions(
    body: S.ChatRequest,
    request: Request,
    ctx: RequestContext = Depends(context),
    state: ServerState = Depends(get_state),
) -> Response:
    return await complete(state, ctx, body, request)
