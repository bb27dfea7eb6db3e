"""POST /v1/completions (plain-text prompts; a list of prompts gives one set of choices each)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tunelab.serve import schemas as S
from tunelab.serve.deps import RequestContext, context, get_state
from tunelab.serve.routes.common import complete
from tunelab.serve.state import ServerState

router = APIRouter(tags=["completions"])


@router.post("/v1/completions")
async def completions(
    body: S.CompletionRequest,
    request: Request,
    ctx: RequestContext = Depends(context),
    state: ServerState = Depends(get_state),
) -> Response:
    return await complete(state, ctx, body, request)
