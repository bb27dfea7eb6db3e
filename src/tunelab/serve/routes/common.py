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
        await _row(entry, e.status)
        raise
    except TunelabError as e:
        await _row(entry, 400)
        raise ApiError(400, str(e)) from None
    except Exception:
        await _row(entry, 500)
        raise
    finally:
        if not entry.written and not streaming:  # cancelled while waiting: still one row
            entry.write(CLIENT_CLOSED, finish="cancelled")


async def _row(entry: Entry, status: int) -> None:
    """A refused request's row, stored before the refusal is sent (a client may read the store right after)."""
    entry.write(status)
    await entry.stored()
