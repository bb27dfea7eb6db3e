"""The FastAPI app: OpenAI-compatible completions over an `Engine`, with keys, limits, guard and logging.

Order of checks for a completion: body size (ASGI middleware, before parsing) -> API key (401) -> rate
limit (429 + Retry-After) -> body validation (400) -> model id (404) -> max_tokens and prompt length (400)
-> input guard (400 on block) -> generation under the request timeout (504) -> output guard ->
store. Every response carries `x-request-id`; it is the key for `POST /v1/feedback`.

Streaming is plain SSE in OpenAI's shape (`data: {chunk}` lines, then `data: [DONE]`). When the output
guard is active the stream passes through `OutputFilter`, which delays text by a few dozen characters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tunelab.errors import TunelabError
from tunelab.serve import schemas as S
from tunelab.serve.config import ServeConfig
from tunelab.serve.engine import Engine, GenResult
from tunelab.serve.guard import Decision, Guard, OutputFilter, blocked
from tunelab.serve.metrics import Metrics
from tunelab.serve.security import BodyLimit, KeyRing, RateLimiter, check_adapter_path
from tunelab.serve.store import Store

log = logging.getLogger("tunelab.serve")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status, self.message, self.type_, self.code, self.headers = status, message, type_, code, headers


class _RequestId:
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


def create_app(engine: Engine, cfg: ServeConfig, keys: KeyRing, store: Store | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.close()

    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=cfg.limits.max_body_bytes)
    app.add_middleware(_RequestId)
    limiter = RateLimiter(cfg.limits.requests_per_minute, cfg.limits.burst)
    guard, metrics = Guard(cfg.guard), Metrics()
    if hasattr(engine, "on_batch"):
        engine.on_batch = metrics.batch_size.observe
    app.state.engine, app.state.store, app.state.metrics = engine, store, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(S.error_body(e.message, e.type_, e.code), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"] if p != "body")
            parts.append(f"{loc}: {'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}")
        return JSONResponse(S.error_body("; ".join(parts)), status_code=400)

    @app.exception_handler(TunelabError)
    async def _user_error(request: Request, e: TunelabError) -> JSONResponse:
        return JSONResponse(S.error_body(str(e)), status_code=400)

    async def auth(request: Request) -> str | None:
        key_id = keys.identify(request.headers.get("authorization"))
        if key_id is None and not keys.open:
            raise ApiError(401, "invalid or missing API key", "authentication_error", "invalid_api_key")
        wait = limiter.take(key_id or "anonymous")
        if wait > 0:
            metrics.rate_limited.labels(key_id or "anonymous").inc()
            raise ApiError(
                429,
                f"rate limit exceeded; retry in {wait:.1f}s",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"retry-after": str(int(wait) + 1)},
            )
        return key_id

    async def admin(key_id: str | None = Depends(auth)) -> str | None:
        if not keys.open and key_id not in keys.admin_ids:
            raise ApiError(403, "this key may not manage adapters", "permission_error")
        return key_id

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": engine.model_ids()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(key_id: str | None = Depends(auth)) -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "tunelab"} for m in engine.model_ids()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(body: S.ChatRequest, request: Request, key_id: str | None = Depends(auth)) -> Response:
        msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
        return await _complete(request, key_id, body, "chat", msgs, body.max_completion_tokens or body.max_tokens)

    @app.post("/v1/completions")
    async def completions(body: S.CompletionRequest, request: Request, key_id: str | None = Depends(auth)) -> Response:
        try:
            prompt = body.prompt_text()
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        return await _complete(request, key_id, body, "completion", prompt, body.max_tokens)

    async def _complete(
        request: Request,
        key_id: str | None,
        body: S._Sampling,
        kind: str,
        content: Any,
        max_tokens: int | None,
    ) -> Response:
        rid, start, endpoint = request.state.request_id, time.perf_counter(), request.url.path
        if body.model not in engine.model_ids():
            raise ApiError(
                404,
                f"model {body.model!r} not found; served: {', '.join(engine.model_ids())}",
                code="model_not_found",
            )
        max_tokens = max_tokens or cfg.limits.default_max_tokens
        if max_tokens > cfg.limits.max_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {cfg.limits.max_tokens}")
        try:
            params = body.sampling(max_tokens)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        content, decisions = _guard_input(kind, content)
        record = {
            **body.model_dump(exclude_none=True, exclude={"messages", "prompt"}),
            ("messages" if kind == "chat" else "prompt"): content,
        }
        ctx = dict(rid=rid, key_id=key_id, endpoint=endpoint, model=body.model, record=record, start=start)
        if hit := blocked(decisions):
            await _log(ctx, None, None, 400, decisions)
            raise ApiError(400, f"request refused by the guard ({hit.rule}: {hit.detail})", code="content_filter")
        ids = engine.encode_chat(content) if kind == "chat" else engine.encode_text(content)
        limit = min(cfg.limits.max_prompt_tokens, engine.max_context() - max_tokens)
        if len(ids) > limit:
            raise ApiError(400, f"prompt is {len(ids)} tokens; at most {limit} allowed with max_tokens {max_tokens}")
        metrics.prompt_tokens.labels(body.model).inc(len(ids))
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = _stream(ctx, kind, ids, params, decisions, include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        cancelled = False
        metrics.in_flight.inc()
        try:
            result = await asyncio.wait_for(
                engine.generate(body.model, ids, params, is_cancelled=lambda: cancelled, tenant=key_id),
                cfg.limits.request_timeout_s,
            )
        except asyncio.TimeoutError:
            cancelled = True
            await _log(ctx, None, None, 504, decisions)
            raise ApiError(504, f"generation took over {cfg.limits.request_timeout_s}s", "timeout") from None
        finally:
            metrics.in_flight.dec()
        text, out_decisions = guard.check(result.text, "output")
        decisions += _count(out_decisions)
        finish = "content_filter" if blocked(out_decisions) else result.finish_reason
        text = "" if finish == "content_filter" else text
        await _log(ctx, text, result, 200, decisions, finish)
        build = S.chat_response if kind == "chat" else S.completion_response
        return JSONResponse(
            build(rid, body.model, text, finish, S.usage(result.prompt_tokens, result.completion_tokens))
        )

    def _guard_input(kind: str, content: Any) -> tuple[Any, list[Decision]]:
        if kind == "completion":
            text, decisions = guard.check(content, "input")
            return text, _count(decisions)
        msgs, decisions = [], []
        for m in content:
            text, d = guard.check(m["content"], "input") if m["role"] != "assistant" else (m["content"], [])
            msgs.append({**m, "content": text})
            decisions += d
        return msgs, _count(decisions)

    def _count(decisions: list[Decision]) -> list[Decision]:
        for d in decisions:
            metrics.guard.labels(d.stage, d.rule, d.action).inc()
        return decisions

    async def _stream(
        ctx: dict, kind: str, ids: list[int], params: Any, decisions: list[Decision], include_usage: bool
    ) -> AsyncIterator[str]:
        rid, model, chat = ctx["rid"], ctx["model"], kind == "chat"
        deltas: asyncio.Queue[str] = asyncio.Queue()
        state = {"cancelled": False}
        out = OutputFilter(guard)
        metrics.in_flight.inc()
        task = asyncio.ensure_future(
            engine.generate(
                model,
                ids,
                params,
                on_delta=deltas.put_nowait,
                is_cancelled=lambda: state["cancelled"],
                tenant=ctx["key_id"],
            )
        )
        deadline = time.monotonic() + cfg.limits.request_timeout_s
        sent, status, result = [], 200, None
        try:
            yield _sse(S.chunk(rid, model, chat, None, None, first=True))
            while not (task.done() and deltas.empty()) and not out.blocked:
                getter = asyncio.ensure_future(deltas.get())
                await asyncio.wait(
                    {getter, task},
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not getter.done():
                    getter.cancel()
                    if time.monotonic() >= deadline:
                        status = 504
                        break
                    continue
                if text := out.feed(getter.result()):
                    sent.append(text)
                    yield _sse(S.chunk(rid, model, chat, text, None))
            if status == 504:
                state["cancelled"] = True
                yield _sse(S.error_body(f"generation took over {cfg.limits.request_timeout_s}s", "timeout"))
            else:
                result = await task
                if (text := out.finish()) and not out.blocked:
                    sent.append(text)
                    yield _sse(S.chunk(rid, model, chat, text, None))
                finish = "content_filter" if out.blocked else result.finish_reason
                yield _sse(S.chunk(rid, model, chat, None, finish))
                if include_usage:
                    u = S.usage(result.prompt_tokens, result.completion_tokens)
                    yield _sse(
                        {
                            "id": rid,
                            "object": "chat.completion.chunk",
                            "model": model,
                            "choices": [],
                            "usage": u,
                        }
                    )
                yield "data: [DONE]\n\n"
        finally:
            state["cancelled"] = state["cancelled"] or not task.done()  # client went away: stop decoding
            metrics.in_flight.dec()
            decisions += _count(out.decisions)
            ended = "content_filter" if out.blocked else (result.finish_reason if result else None)
            await _log(ctx, "".join(sent), result, status, decisions, ended)

    async def _log(
        ctx: dict,
        text: str | None,
        result: GenResult | None,
        status: int,
        decisions: list[Decision],
        finish=None,
    ) -> None:
        elapsed = time.perf_counter() - ctx["start"]
        metrics.requests.labels(ctx["endpoint"], str(status)).inc()
        if status == 200:
            metrics.latency.labels(ctx["endpoint"]).observe(elapsed)
        if result is not None:
            metrics.tokens.labels(ctx["model"]).inc(result.completion_tokens)
        if store is None:
            return
        adapter = None if ctx["model"] == engine.model_ids()[0] else ctx["model"]
        await asyncio.to_thread(
            store.log_request,
            ctx["rid"],
            api_key_id=ctx["key_id"],
            endpoint=ctx["endpoint"],
            model=ctx["model"],
            adapter=adapter,
            request=ctx["record"],
            response_text=text,
            finish_reason=finish,
            prompt_tokens=result.prompt_tokens if result else None,
            completion_tokens=result.completion_tokens if result else None,
            latency_ms=elapsed * 1000,
            status=status,
            decisions=decisions,
        )

    @app.post("/v1/feedback")
    async def feedback(body: S.FeedbackRequest, key_id: str | None = Depends(auth)) -> dict[str, Any]:
        if store is None:
            raise ApiError(503, "feedback needs request logging (store.enabled: true in the serve config)")
        row = await asyncio.to_thread(store.request, body.request_id)
        if row is None or (row["api_key_id"] != key_id):  # a key rates only its own requests
            raise ApiError(404, f"no request {body.request_id!r} for this key", code="request_not_found")
        fid = await asyncio.to_thread(store.add_feedback, body.request_id, body.rating, body.corrected, body.comment)
        return {"id": fid, "request_id": body.request_id, "object": "feedback"}

    @app.get("/admin/adapters")
    async def adapters(key_id: str | None = Depends(admin)) -> dict[str, Any]:
        return {"base": engine.model_ids()[0], "adapters": engine.model_ids()[1:]}

    @app.post("/admin/adapters")
    async def load(body: S.AdapterRequest, key_id: str | None = Depends(admin)) -> dict[str, Any]:
        path = check_adapter_path(body.path, cfg.adapter_dirs)
        await engine.load_adapter(body.name, path)
        log.info("key %s loaded adapter %s from %s", key_id, body.name, path)
        return {"loaded": body.name, "models": engine.model_ids()}

    @app.delete("/admin/adapters/{name}")
    async def unload(name: str, key_id: str | None = Depends(admin)) -> dict[str, Any]:
        if name not in engine.model_ids()[1:]:
            raise ApiError(404, f"no adapter named {name!r}")
        await engine.unload_adapter(name)
        log.info("key %s unloaded adapter %s", key_id, name)
        return {"unloaded": name, "models": engine.model_ids()}

    return app


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
