"""A real server for tests: uvicorn on 127.0.0.1 over a tiny run, two API keys (user `alice`, admin `ops`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from tunelab.serve.config import ServeConfig
from tunelab.serve.runtime import ServerThread, build_app, build_engine
from tunelab.serve.security import new_api_key
from tunelab.serve.state import ServerState


@dataclass
class Server:
    url: str
    state: ServerState
    key: str
    admin_key: str
    client: openai.OpenAI
    aclient: openai.AsyncOpenAI

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_key}"}

    def settle(self, bound_s: float = 60) -> None:
        """Wait (at most `bound_s`, a bound, not a measurement) until nothing is generating and every row is
        written: what a test reads from the store after disconnects is then complete."""
        deadline = time.monotonic() + bound_s
        while any(self.state.inflight.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(self.state.inflight.values()), f"still generating: {dict(self.state.inflight)}"
        if self.state.recorder is not None:
            assert self.state.recorder.drain(bound_s)


def config(tmp: Path, **overrides: Any) -> ServeConfig:
    base: dict[str, Any] = {
        "auth": {"keys_file": str(tmp / "keys"), "admin_key_ids": ["ops"]},
        "limits": {"burst": 10000, "requests_per_minute": 60000, "max_tokens": 64},
        "store": {"enabled": True, "url": f"sqlite:///{tmp / 'serve.db'}"},
    }
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    return ServeConfig.model_validate(base)


@contextmanager
def serving(run: Path, tmp: Path, **overrides: Any) -> Iterator[Server]:
    key, line = new_api_key("alice")
    admin_key, admin_line = new_api_key("ops")
    (tmp / "keys").write_text(f"{line}\n{admin_line}\n")
    cfg = config(tmp, **overrides)
    app = build_app(build_engine(run, cfg), cfg)
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
        aclient = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
        yield Server(srv.url, app.state.tunelab, key, admin_key, client, aclient)
