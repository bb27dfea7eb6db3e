"""Assemble a server: what to serve (a run dir, a model folder or a preset) -> engine -> app -> uvicorn.

A run whose `final/` is a LoRA adapter is served as its base model plus that adapter, named after the run
directory, so the same process can answer for the base and any number of sibling adapters. A full-model
run (or a plain model folder) is the base itself. Adapters named at start come from the operator's command
line and are checked for safetensors only; adapters loaded at runtime through /admin must also lie inside
`adapter_dirs`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from tunelab.errors import TunelabError
from tunelab.models.load import load_model, load_tokenizer
from tunelab.models.loader import is_run_dir, resolve
from tunelab.serve.adapters import validate_adapter
from tunelab.serve.app import create_app
from tunelab.serve.config import LimitsConfig, ServeConfig
from tunelab.serve.engine import HFEngine
from tunelab.serve.security import KeyRing, load_key_hashes
from tunelab.serve.store import Store
from tunelab.serve.timeouts import uvicorn_options

log = logging.getLogger("tunelab.serve")


def build_engine(target: str | Path, cfg: ServeConfig, adapters: dict[str, str] | None = None) -> HFEngine:
    """Load what `target` names and the adapters (NAME -> folder or run dir) into one engine."""
    import torch

    from tunelab.models.heads import refuse_head
    from tunelab.models.load import resolve_dtype

    for path in [target, *cfg.adapters.values(), *(adapters or {}).values()]:
        refuse_head(path, "serve")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = resolve_dtype(cfg.dtype)
    t = resolve(target)  # an adapter run is served as its base plus the adapter, named after the run
    model, tokenizer = load_model(t.base, dtype=dtype), load_tokenizer(t.tokenizer)
    first = None if t.adapter is None else ((t.run or t.adapter).resolve().name, t.adapter)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    b = cfg.batch
    engine = HFEngine(
        model, tokenizer, cfg.base_name or "base", b.max_batch_size, b.wait_ms, b.extra_slots, b.max_prefill_tokens
    )
    todo = ([first] if first else []) + [
        (n, _adapter_folder(p)) for n, p in {**cfg.adapters, **(adapters or {})}.items()
    ]
    for name, path in todo:
        _check_vocab(engine, path)
        validate_adapter(path, engine.model)
        engine._load_adapter(name, path)
    return engine


def _adapter_folder(path: str) -> Path:
    p = Path(path).expanduser()
    return p / "final" if is_run_dir(p) else p


def _check_vocab(engine: HFEngine, path: Path) -> None:
    tok = path / "tokenizer.json"
    if tok.is_file():
        from transformers import AutoTokenizer

        n = len(AutoTokenizer.from_pretrained(str(path)))
        if n != len(engine.tokenizer):
            raise TunelabError(f"{path}: adapter tokenizer has {n} tokens, the served base has {len(engine.tokenizer)}")


def build_app(engine: HFEngine, cfg: ServeConfig) -> Any:
    keys = KeyRing(load_key_hashes(cfg.auth), cfg.auth.admin_key_ids)
    if keys.open and not _is_loopback(cfg.host):
        raise TunelabError(
            f"no API keys configured: refusing to listen on {cfg.host} without keys "
            f"(set {cfg.auth.keys_env} or auth.keys_file, or bind 127.0.0.1)"
        )
    if keys.open:
        log.warning("no API keys configured: the server on %s accepts every request", cfg.host)
    store = Store(cfg.store.url, cfg.store.retries, cfg.store.busy_timeout_ms) if cfg.store.enabled else None
    return create_app(engine, cfg, keys, store)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A real uvicorn server on a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        limits = app.state.tunelab.cfg.limits if hasattr(app.state, "tunelab") else LimitsConfig()
        options = uvicorn_options(limits)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(target: str, cfg: ServeConfig, adapters: dict[str, str] | None = None) -> None:
    """Load and serve until interrupted."""
    engine = build_engine(target, cfg, adapters)
    app = build_app(engine, cfg)
    log.info("serving %s on http://%s:%d", ", ".join(engine.model_ids()), cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", **uvicorn_options(cfg.limits))
