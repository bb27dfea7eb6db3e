"""Each router works mounted alone on an app of its own (real uvicorn on 127.0.0.1, real engine)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tunelab.serve.app import assemble
from tunelab.serve.config import ServeConfig
from tunelab.serve.routes import ROUTERS
from tunelab.serve.runtime import ServerThread, build_engine
from tunelab.serve.security import KeyRing, hash_key
from tunelab.serve.state import ServerState
from tunelab.serve.store import Store

USER, ADMIN = "tl-user-key", "tl-admin-key"
CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def state(runs: dict[str, Path], tmp_path: Path) -> ServerState:
    """A fresh state per test: an engine lives on the event loop of the one server that closes it."""
    tmp = tmp_path
    cfg = ServeConfig.model_validate(
        {"adapter_dirs": [str(runs["lora2"].parent)], "limits": {"burst": 1000, "requests_per_minute": 60000}}
    )
    keys = KeyRing({hash_key(USER): "alice", hash_key(ADMIN): "ops"}, ["ops"])
    return ServerState.build(build_engine(runs["lora"], cfg), cfg, keys, Store(f"sqlite:///{tmp / 'db.sqlite'}"))


def only(state: ServerState, *names: str) -> ServerThread:
    return ServerThread(assemble(state, {n: ROUTERS[n] for n in names}))


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_models_router_alone(state) -> None:
    with only(state, "models") as srv:
        assert [m["id"] for m in httpx.get(srv.url + "/v1/models", headers=auth(USER)).json()["data"]] == [
            "base",
            "lora-a",
        ]
        assert httpx.get(srv.url + "/v1/models/lora-a", headers=auth(USER)).json()["parent"] == "base"
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        missing = httpx.post(srv.url + "/v1/chat/completions", json={}, headers=auth(USER))
        assert missing.status_code == 404 and "error" in missing.json()  # chat is not mounted here


def test_chat_router_alone_writes_its_row(state) -> None:
    with only(state, "chat") as srv:
        body = {"model": "lora-a", "messages": CHAT, "max_tokens": 3}
        r = httpx.post(srv.url + "/v1/chat/completions", json=body, headers=auth(USER))
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        row = state.store.request(r.headers["x-request-id"])
        assert (row["api_key_id"], row["adapter"], row["completion_tokens"]) == ("alice", "lora-a", 3)


def test_completions_router_alone(state) -> None:
    with only(state, "completions") as srv:
        body = {"model": "base", "prompt": ["a", "b"], "max_tokens": 2}
        r = httpx.post(srv.url + "/v1/completions", json=body, headers=auth(USER))
        assert [c["index"] for c in r.json()["choices"]] == [0, 1]


def test_feedback_router_alone(state) -> None:
    with only(state, "chat", "feedback") as srv:
        r = httpx.post(
            srv.url + "/v1/chat/completions",
            json={"model": "base", "messages": CHAT, "max_tokens": 2},
            headers=auth(USER),
        )
        fb = {"request_id": r.headers["x-request-id"], "rating": 1}
        assert httpx.post(srv.url + "/v1/feedback", json=fb, headers=auth(USER)).json()["object"] == "feedback"
        assert httpx.post(srv.url + "/v1/feedback", json=fb, headers=auth(ADMIN)).status_code == 404  # not its own


def test_admin_router_alone(state, runs) -> None:
    with only(state, "admin") as srv:
        assert httpx.get(srv.url + "/admin/adapters", headers=auth(USER)).status_code == 403
        assert httpx.get(srv.url + "/admin/adapters", headers=auth(ADMIN)).json() == {
            "base": "base",
            "adapters": ["lora-a"],
        }
        r = httpx.post(srv.url + "/admin/adapters", json={"name": "b", "path": str(runs["lora2"])}, headers=auth(ADMIN))
        assert r.json()["models"] == ["base", "lora-a", "b"]
        assert httpx.delete(srv.url + "/admin/adapters/b", headers=auth(ADMIN)).json()["drained"] is True


def test_ops_router_alone(state) -> None:
    with only(state, "ops") as srv:
        assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
        assert httpx.get(srv.url + "/health", headers=auth(ADMIN)).json()["models"] == ["base", "lora-a"]
        assert httpx.get(srv.url + "/metrics", headers=auth(USER)).status_code == 403
        assert "tunelab_requests_total" in httpx.get(srv.url + "/metrics", headers=auth(ADMIN)).text
