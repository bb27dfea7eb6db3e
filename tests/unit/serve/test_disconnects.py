"""Nothing lost: clients that go away mid-answer (streamed or not) each leave exactly one row, marked
cancelled; unloading an adapter drains its requests or ends them with an error event. Bounded, 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa
from servers import Server, serving

CHAT = [{"role": "user", "content": "Tell me a long story."}]
LONG = 3000  # tokens: far more than what is generated before a client goes away
# Greedy: the tiny model's greedy answer to CHAT runs past 400 tokens without an end of turn, so every
# request below is still generating when its client leaves (a sampled one may end by itself early).


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'storm.db'}"
    return request.getfixturevalue("pg_url")


def raw_request(url: str, body: dict, key: str) -> socket.socket:
    """Send a request on a bare socket and leave it unread (closing it is the client going away)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    ).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(head + data)
    return s


def wait_for(predicate, bound_s: float = 60) -> None:
    deadline = time.monotonic() + bound_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached within the bound"
        time.sleep(0.01)


async def stream_then_leave(api: Server, user: str) -> None:
    body = {"model": "base", "messages": CHAT, "max_tokens": LONG, "stream": True, "user": user, "temperature": 0}
    url = api.url + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=60) as client, client.stream("POST", url, json=body, headers=api.auth) as r:
        seen = 0
        async for line in r.aiter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                return  # leaving the block closes the connection mid-stream


def rows_by_user(url: str) -> dict[str, dict]:
    engine = sa.create_engine(url)
    with engine.connect() as c:
        rows = [dict(r) for r in c.execute(sa.text("select * from requests")).mappings()]
    engine.dispose()
    out = {}
    for r in rows:
        req = r["request_json"] if isinstance(r["request_json"], dict) else json.loads(r["request_json"])
        out[req["user"]] = r
    assert len(out) == len(rows), "one row per request"
    return out


def test_disconnect_storm_leaves_one_marked_row_per_request(runs, tmp_path, store_url) -> None:
    limits = {"max_tokens": LONG, "max_prompt_tokens": 512}
    with serving(runs["full"], tmp_path, limits=limits, store={"url": store_url}) as api:
        raw = [
            raw_request(
                api.url,
                {"model": "base", "messages": CHAT, "max_tokens": LONG, "user": f"raw-{i}", "temperature": 0},
                api.key,
            )
            for i in range(6)
        ]
        wait_for(lambda: api.state.inflight["base"] == 6)  # all six are generating
        for s in raw:
            s.close()

        async def streams() -> None:
            await asyncio.gather(*(stream_then_leave(api, f"stream-{i}") for i in range(16)))

        asyncio.run(streams())
        for i in range(4):
            api.client.chat.completions.create(model="base", messages=CHAT, max_tokens=4, user=f"ok-{i}", temperature=0)
        api.settle()
        rows = rows_by_user(store_url)
    assert len(rows) == 6 + 16 + 4
    for user, row in rows.items():
        if user.startswith("ok-"):
            assert (row["status"], row["completion_tokens"]) == (200, 4)
        else:  # each went away long before LONG tokens: marked, and stopped decoding
            assert (row["status"], row["finish_reason"]) == (499, "cancelled"), user
            assert row["completion_tokens"] < LONG


def test_unload_drains_requests_in_flight(runs, tmp_path) -> None:
    with serving(runs["full"], tmp_path, adapter_dirs=[str(runs["lora2"].parent)]) as api:
        url = api.url + "/admin/adapters"
        assert httpx.post(url, json={"name": "b", "path": str(runs["lora2"])}, headers=api.admin).status_code == 200
        stream = api.client.chat.completions.create(model="b", messages=CHAT, max_tokens=48, stream=True)
        first = next(iter(stream))
        result: dict = {}
        deleting = threading.Thread(
            target=lambda: result.update(r=httpx.delete(url + "/b", headers=api.admin, timeout=60))
        )
        deleting.start()
        wait_for(lambda: "b" in api.state.unloading)
        with pytest.raises(openai.NotFoundError):  # no new request for an adapter being unloaded
            api.client.chat.completions.create(model="b", messages=CHAT, max_tokens=2)
        rest = list(stream)
        deleting.join(60)
    assert first.choices[0].delta.role == "assistant" and rest[-1].choices[0].finish_reason in ("length", "stop")
    assert result["r"].json()["drained"] is True


def test_unload_after_the_drain_timeout_ends_streams_with_an_error_event(runs, tmp_path) -> None:
    overrides = {"adapter_dirs": [str(runs["lora2"].parent)], "limits": {"drain_timeout_s": 0, "max_tokens": LONG}}
    with serving(runs["full"], tmp_path, **overrides) as api:
        url = api.url + "/admin/adapters"
        assert httpx.post(url, json={"name": "b", "path": str(runs["lora2"])}, headers=api.admin).status_code == 200
        raw = api.client.chat.completions.with_raw_response.create(
            model="b", messages=CHAT, max_tokens=LONG, stream=True, user="unloaded", temperature=0
        )
        stream = raw.parse()
        next(iter(stream))
        r = httpx.delete(url + "/b", headers=api.admin, timeout=60)
        with pytest.raises(openai.APIError, match="adapter 'b' was unloaded"):
            list(stream)
        api.settle()
        row = api.state.store.request(raw.headers["x-request-id"])
    assert r.json()["drained"] is False and (row["status"], row["finish_reason"]) == (410, "cancelled")
