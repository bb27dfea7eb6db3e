"""Every error in OpenAI's shape: `{"error": {"message", "type", "code", "param"}}` with a fitting status.

OpenAI clients read this shape to raise the right exception (`BadRequestError`, `NotFoundError`, ...), so
it is used for everything the server refuses: invalid JSON and failed validation (400, `param` names the
first offending field), unknown routes (404) and methods (405), refusals raised as `ApiError`, a
`TunelabError` from below (400), and an unexpected exception (500, logged with its traceback, the client
gets only the request id).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tunelab.errors import TunelabError
from tunelab.serve.schemas import error_body

log = logging.getLogger("tunelab.serve")

_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type_, self.code, self.headers = status, message, type_, code, headers
        self.param = param

    def body(self) -> dict:
        return error_body(self.message, self.type_, self.code, self.param)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts, params = [], []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"] if p != "body")
            params.append(loc or None)
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            if err["type"] == "json_invalid":
                msg = f"invalid JSON ({err.get('ctx', {}).get('error', 'cannot parse')})"
            parts.append(f"{loc}: {msg}" if loc else msg)
        return JSONResponse(error_body("; ".join(parts), param=params[0] if params else None), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {e.detail}"
        type_ = _HTTP_TYPES.get(e.status_code, "invalid_request_error")
        return JSONResponse(error_body(message, type_), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(TunelabError)
    async def _user_error(request: Request, e: TunelabError) -> JSONResponse:
        return JSONResponse(error_body(str(e)), status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> JSONResponse:
        rid = request.scope.get("state", {}).get("request_id", "?")
        log.error("request %s failed: %s", rid, type(e).__name__, exc_info=e)
        return JSONResponse(error_body(f"internal error (request {rid})", "server_error"), status_code=500)
