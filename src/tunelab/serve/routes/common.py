"""The one entry point both completion routers call: prepare, then answer streamed or whole, one row always."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from tunelab.errors import TunelabError
from tunelab.serve.completion import Body, prepare, record_of, respond
from tunelab.serve.deps import RequestContext
from tunelab.serve.entry import CLIENT_CLOSED, Entry
from tunelab.serve.errors import ApiError
from tunelab.serve.state import ServerState
from tunelab.serve.streaming import events


async def complete(state: ServerState, ctx: RequestContext, body: Body, request: Request) -> Response:
    entry = Entry(state, ctx, body.model, record_of(body, None))
    streaming = False
    try:
        call = await prepare(state, entry, body)
        if body.stream:
            streaming = True  # from here the stream owns the row (streaming.py)
            stream = events(call, body.include_usage)
            return StreamingResponse(stream, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        return await respond(call, request)
    except ApiError as e:
        entry.write(e.status)
        raise
    except TunelabError as e:
        entry.write(400)
        raise ApiError(400, str(e)) from None
    except Exception:
        entry.write(500)
        raise
    finally:
        if not entry.written and not streaming:  # cancelled while waiting: still one row
            entry.write(CLIENT_CLOSED, finish="cancelled")
