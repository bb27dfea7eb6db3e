"""API keys (stored as sha256 hashes), per-key token-bucket rate limits, a body-size limit, adapter paths.

Keys: the server never sees a plaintext key at rest. `KEY_ID SHA256_HEX` lines come from a file and/or
`KEY_ID:SHA256_HEX` pairs from an env var; a request's bearer token is hashed and looked up. The key id
(not the key) is what logs and the store record. Keys are high-entropy random strings (`new_api_key`), so
an unsalted sha256 is enough; this is not a password store.

The body limit is an ASGI middleware so an oversize upload is refused from its Content-Length (or cut off
while streaming in, for chunked bodies) before any of it is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.serve.config import AuthConfig
from tunelab.textio import read_text

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key(key_id: str) -> tuple[str, str]:
    """(plaintext key to hand out once, `KEY_ID SHA256` line for the keys file)."""
    key = "tl-" + secrets.token_urlsafe(32)
    return key, f"{key_id} {hash_key(key)}"


def load_key_hashes(cfg: AuthConfig) -> dict[str, str]:
    """sha256 hex -> key id, from the keys file and the env var; malformed entries are errors, not skipped."""
    found: dict[str, str] = {}
    if cfg.keys_file:
        path = Path(cfg.keys_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"auth.keys_file: {path} not found")
        try:
            text = read_text(path, "keys file")
        except DataError as e:  # not UTF-8 text
            raise ConfigError(f"auth.keys_file: {e}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                _add(found, line.split(), f"{path}, line {n}")
    env = os.environ.get(cfg.keys_env, "")
    for i, pair in enumerate(p.strip() for p in env.split(",") if p.strip()):
        _add(found, pair.split(":", 1), f"env {cfg.keys_env}, entry {i + 1}")
    return found


def _add(found: dict[str, str], parts: list[str], where: str) -> None:
    if len(parts) != 2 or not _HEX64.match(parts[1].lower()):
        raise ConfigError(f"{where}: expected KEY_ID and a 64-hex-digit sha256 of the key (not the key itself)")
    found[parts[1].lower()] = parts[0]


class KeyRing:
    def __init__(self, hashes: dict[str, str], admin_ids: list[str]) -> None:
        self.hashes, self.admin_ids = hashes, set(admin_ids)

    @property
    def open(self) -> bool:
        """No keys configured: every request is allowed (only permitted on a loopback address)."""
        return not self.hashes

    def identify(self, authorization: str | None) -> str | None:
        """Key id for an `Authorization: Bearer KEY` header, or None when missing/unknown."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        return self.hashes.get(hash_key(authorization[7:].strip()))


class RateLimiter:
    """One token bucket per key id: `burst` tokens, refilled at `per_minute / 60` tokens a second."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate, self.burst = per_minute / 60.0, float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill time)
        self.lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """0 when allowed (a token is spent), else the seconds to wait before retrying."""
        now = time.monotonic()
        with self.lock:
            tokens, last = self.buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self.buckets[key_id] = (tokens - 1, now)
                return 0.0
            self.buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate


def check_adapter_path(path: str | Path, allowed: list[str]) -> Path:
    """Resolve an adapter folder (a run dir means its final/) and require it inside an allowed folder."""
    p = Path(path).expanduser().resolve()
    if (p / "final").is_dir() and (p / "config.yaml").is_file():
        p = p / "final"
    roots = [Path(a).expanduser().resolve() for a in allowed]
    if not any(p == r or r in p.parents for r in roots):
        where = ", ".join(map(str, roots)) or "none configured (set adapter_dirs)"
        raise TunelabError(f"adapter path {p} is outside the allowed adapter folders: {where}")
    if not (p / "adapter_config.json").is_file():
        raise TunelabError(f"{p}: not a LoRA adapter folder (no adapter_config.json)")
    if not (p / "adapter_model.safetensors").is_file():
        raise TunelabError(f"{p}: no adapter_model.safetensors (pickled .bin adapters are never loaded)")
    return p


class BodyLimit:
    """ASGI middleware: 413 for bodies over `limit` bytes, by Content-Length or while reading chunks."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {
                "error": {
                    "message": f"request body over {self.limit} bytes",
                    "type": "invalid_request_error",
                    "code": "request_too_large",
                    "param": None,
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
