"""Slow clients on bare sockets against a real server: headers or a body trickled in, or nothing sent, end in
a 408 (or a quiet close) within the configured read and idle timeouts, while other clients are served."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from servers import serving

BODY = json.dumps({"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()


@pytest.fixture(scope="module")
def api(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    limits = {"read_timeout_s": 1.5, "idle_timeout_s": 0.5}
    with serving(runs["full"], tmp_path_factory.mktemp("timeouts"), limits=limits) as s:
        yield s


def connect(api) -> socket.socket:
    host, port = api.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(30)  # a bound on each read, far above the server's timeouts
    return s


def head(api, length: int = len(BODY)) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {api.key}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    ).encode()


def trickle(s: socket.socket, data: bytes, pause_s: float) -> int:
    """Send `data` a byte at a time, `pause_s` apart (under the idle timeout); how many bytes went out before
    the server closed the connection."""
    for i in range(len(data)):
        try:
            s.sendall(data[i : i + 1])
        except OSError:
            return i
        time.sleep(pause_s)
    return len(data)


def reply(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def status_and_error(raw: bytes) -> tuple[int, dict]:
    header, _, body = raw.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(body)["error"]


def test_a_trickled_body_gets_408_and_the_connection_closes(api) -> None:
    s = connect(api)
    s.sendall(head(api))
    sent = trickle(s, BODY, 0.2)  # steady enough for the idle timeout, too slow for the read timeout
    assert sent < len(BODY), "the server read the whole trickled body"
    status, err = status_and_error(reply(s))
    assert status == 408 and err["code"] == "request_timeout" and "body" in err["message"]


def test_trickled_headers_get_408(api) -> None:
    s = connect(api)
    sent = trickle(s, head(api) + BODY, 0.2)
    assert sent < len(head(api))
    status, err = status_and_error(reply(s))
    assert status == 408 and "headers" in err["message"]


def test_silence_after_the_headers_gets_408(api) -> None:
    s = connect(api)
    s.sendall(head(api) + BODY[:10])
    status, err = status_and_error(reply(s))  # nothing more is sent: the idle timeout ends it
    assert status == 408 and "body" in err["message"]


def test_an_idle_connection_is_closed_quietly_and_others_are_served(api) -> None:
    idle = connect(api)  # sends nothing
    r = api.client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert reply(idle) == b""


def test_a_prompt_client_is_answered_and_kept_alive(api) -> None:
    s = connect(api)
    for _ in range(2):  # two requests on one connection, the second after a pause under the idle timeout
        s.sendall(head(api) + BODY)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
    s.close()
