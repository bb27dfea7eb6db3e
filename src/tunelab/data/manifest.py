"""What a run's data was: the sha256 of each file (or folder), for manifests and cache keys."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_manifest(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(p)}:{sha256_file(f)}\n".encode())
        return {"path": str(p), "sha256": h.hexdigest(), "bytes": sum(f.stat().st_size for f in files)}
    return {"path": path, "sha256": None, "note": "hub dataset: not hashed"}
