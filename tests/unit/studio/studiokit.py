"""Helpers for the studio's tests: a real server (uvicorn on 127.0.0.1) over the tiny preset with the job queue,
jobs that train the tiny model for a few steps in real worker processes, and two API keys (user `alice`, admin
`ops`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from tunelab.serve.runtime import ServerThread
from tunelab.serve.security import new_api_key
from tunelab.studio.app import StudioApp, build
from tunelab.studio.config import StudioConfig
from tunelab.studio.service import Studio

WORDS = ["red", "kite", "boat", "seven", "green", "apple", "river", "stone", "cloud", "bird", "lamp", "tree"]


def chat_rows(words: list[str], verb: str = "Say") -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"{verb} {w}."}, {"role": "assistant", "content": w}]}
            for w in words]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job_defaults(max_steps: int = 4, save_every: int = 2) -> dict[str, Any]:
    """Tiny jobs: LoRA r=4, a few steps, a checkpoint every `save_every`, one torch thread."""
    return {
        "tuning": {"mode": "lora", "lora": {"r": 4, "alpha": 8}},
        "data": {"max_length": 64},
        "train": {"max_steps": max_steps, "batch_size": 4, "lr": 1e-2, "log_every": 1, "save_every": save_every,
                  "threads": 1, "warmup_ratio": 0.0},
        "eval": {"metrics": ["loss"], "forgetting": {"enabled": False}, "bootstrap_resamples": 200},
    }  # fmt: skip


def studio_config(
    tmp: Path, url: str | None = None, keys: bool = True, store: bool = False, **jobs: Any
) -> StudioConfig:
    serve: dict[str, Any] = {"limits": {"burst": 10000, "requests_per_minute": 60000, "max_tokens": 64}}
    if store:  # request logging, which the feedback review queue reads
        serve["store"] = {"enabled": True, "url": f"sqlite:///{tmp / 'serve.db'}"}
    if keys:
        serve["auth"] = {"keys_file": str(tmp / "keys"), "admin_key_ids": ["ops"]}
    return StudioConfig.model_validate({
        "serve": serve,
        "jobs": {"dir": str(tmp / "studio"), "runs_dir": str(tmp / "runs"), "poll_s": 0.2, "url": url,
                 "shutdown_timeout_s": 60, "defaults": jobs.pop("defaults", job_defaults()), **jobs},
        "run_dirs": [str(tmp / "runs")], "data_dirs": [str(tmp)],
    })  # fmt: skip


@dataclass
class Running:
    url: str
    app: StudioApp
    key: str
    admin_key: str
    client: openai.OpenAI  # alice's key
    admin: openai.OpenAI

    @property
    def studio(self) -> Studio:
        return self.app.studio


def make_keys(tmp: Path) -> tuple[str, str]:
    keys = tmp / "keys"
    if keys.exists():  # a restarted studio keeps its keys
        return tuple(keys.with_suffix(".plain").read_text().split())  # type: ignore[return-value]
    key, line = new_api_key("alice")
    admin_key, admin_line = new_api_key("ops")
    keys.write_text(f"{line}\n{admin_line}\n")
    keys.with_suffix(".plain").write_text(f"{key} {admin_key}")
    return key, admin_key


@contextmanager
def running_studio(tmp: Path, cfg: StudioConfig, adapters: dict[str, str] | None = None) -> Iterator[Running]:
    key, admin_key = make_keys(tmp)
    app = build("tiny", cfg, adapters)
    with ServerThread(app) as srv:
        clients = [openai.OpenAI(base_url=srv.url + "/v1", api_key=k, max_retries=0) for k in (key, admin_key)]
        yield Running(srv.url, app, key, admin_key, *clients)
        # uvicorn's shutdown runs the studio's: workers are asked to checkpoint; give them the time to
        srv.server.should_exit = True
        srv.thread.join(timeout=120)


def wait_for(what: Callable[[], Any], bound_s: float = 240, every: float = 0.3, why: str = "") -> Any:
    """Poll until `what()` is truthy (a bound, not a measurement: the shared CPU makes times vary)."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if value := what():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {bound_s}s waiting for {why or what}")
