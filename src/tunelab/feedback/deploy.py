"""`tunelab deploy RUN --server URL --name NAME` and `tunelab rollback NAME`: swap LoRA adapters in a running
server through its admin API (/admin/adapters), and record each swap in the registry (registry.py).

A deploy refuses a run that is not a LoRA adapter (a full model cannot be hot-swapped: serve it), a run whose
gates failed (RUN/gates.json, written by `tunelab retrain`), and a run without gates unless `skip_gates` (the
registry then says so). It loads the adapter under a temporary name first, so the server checks it (files,
shapes against its base) and a bad adapter fails while the old one still serves; then it unloads NAME (the
server drains NAME's requests in flight), loads the adapter as NAME and drops the temporary name. Between that
unload and load (milliseconds) a request for NAME gets 404 `model_not_found`; clients retry. A NAME that the
server serves but the registry does not know is refused: a rollback could not put it back (deploy what serves
it first, with `adopt`, to record it).

A rollback puts back the adapter of the deployment the current one replaced (checked against its recorded
sha256), or unloads NAME when there was none, and records that. The server reads adapter paths on its own
machine: runs must be where the server can see them, inside its `adapter_dirs`.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx

from tunelab.errors import TunelabError
from tunelab.feedback import KEY_ENV
from tunelab.feedback.registry import Registry
from tunelab.feedback.retrain import GATES
from tunelab.quality.io import sha256_file
from tunelab.serve.store import Store


class Admin:
    """The server's admin API, with an admin key (or none for a keyless server on 127.0.0.1)."""

    def __init__(self, url: str, key: str | None = None, timeout: float = 120) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def adapters(self) -> list[str]:
        return list(self._call("GET", "/admin/adapters")["adapters"])

    def load(self, name: str, path: Path) -> None:
        self._call("POST", "/admin/adapters", {"name": name, "path": str(path)})

    def unload(self, name: str) -> None:
        self._call("DELETE", f"/admin/adapters/{name}")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = self.http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise TunelabError(f"{self.url}: cannot reach the server ({type(e).__name__}: {e})") from None
        if r.status_code >= 400:
            try:
                why = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                why = r.text[:300]
            raise TunelabError(f"{self.url}: {method} {path} -> {r.status_code}: {why}")
        return dict(r.json())


def admin_key(env: str = KEY_ENV) -> str | None:
    return os.environ.get(env) or None


def adapter_of(run: Path) -> Path:
    final = run / "final"
    if not (final / "adapter_config.json").is_file():
        raise TunelabError(f"{run}: not a LoRA adapter run (no final/adapter_config.json); a full model cannot be "
                           f"hot-swapped: serve it with `tunelab serve {run}`")  # fmt: skip
    return final.resolve()


def gates_of(run: Path, skip_gates: bool) -> dict[str, Any]:
    path = run / GATES
    if not path.is_file():
        if skip_gates:
            return {"passed": None, "skipped": True, "why": "deployed without gates (--skip-gates)"}
        raise TunelabError(f"{run}: no {GATES}; deploy runs made by `tunelab retrain` (their gates passed), "
                           "or pass --skip-gates to deploy this one anyway (the registry records it)")  # fmt: skip
    gates = json.loads(path.read_text())
    if not gates.get("passed"):
        failed = "; ".join(c["name"] + ": " + c["detail"] for c in gates.get("checks", []) if not c["passed"])
        raise TunelabError(f"{run}: its gates failed ({failed}); it is not deployed")
    return dict(gates)


def deploy(run: str | Path, server: str, name: str, store_url: str | None = None, key: str | None = None,
           promoted_by: str | None = None, skip_gates: bool = False, adopt: bool = False) -> dict[str, Any]:  # fmt: skip
    """Swap RUN's adapter in under NAME and record it; returns the registry row. `adopt` records that NAME
    already serves RUN (loaded at start with `serve --adapter`) without touching the server."""
    run = Path(run).resolve()
    adapter = adapter_of(run)
    gates = {"passed": None, "adopted": True, "why": "recorded as serving already (--adopt)"} if adopt else (
        gates_of(run, skip_gates))  # fmt: skip
    admin, store = Admin(server, key), Store(store_url)
    try:
        registry = Registry(store)
        current, loaded = registry.current(admin.url, name), name in admin.adapters()
        if adopt and not loaded:
            raise TunelabError(f"--adopt: {admin.url} does not serve {name!r}; deploy it instead")
        if loaded and current is None and not adopt:
            raise TunelabError(f"{admin.url} serves {name!r}, but the registry in {_safe(store)} has no deployment "
                               f"of it there: a rollback could not put it back. Record what serves it first "
                               f"(tunelab deploy ITS_RUN --name {name} --adopt) or unload it")  # fmt: skip
        if not adopt:
            swap(admin, name, adapter)
        return registry.record(admin.url, name, "adopt" if adopt else "deploy", str(run), str(adapter), _sha(adapter),
                               promoted_by or getpass.getuser(), gates, current["id"] if current else None)  # fmt: skip
    finally:
        store.close()


def rollback(name: str, server: str | None = None, store_url: str | None = None, key: str | None = None,
             promoted_by: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Put back what served NAME before its current deployment (or unload NAME); returns the new registry row."""
    store = Store(store_url)
    try:
        registry = Registry(store)
        server = server or _only_server(registry, name, store)
        admin = Admin(server, key)
        current = registry.current(admin.url, name)
        if current is None:
            raise TunelabError(f"no deployment of {name!r} on {admin.url} in the registry ({_safe(store)})")
        previous = registry.get(current["previous_id"]) if current["previous_id"] else None
        who = promoted_by or getpass.getuser()
        if previous is None or previous["run"] is None:
            if name in admin.adapters():
                admin.unload(name)
            return registry.record(admin.url, name, "rollback", None, None, None, who, None, None)
        adapter = Path(previous["adapter"])
        if _sha(adapter) != previous["adapter_sha256"]:
            raise TunelabError(f"{adapter}: its adapter changed since it was deployed (sha256 differs from the "
                               "registry's); not rolled back to a model that was never gated")  # fmt: skip
        swap(admin, name, adapter)
        return registry.record(admin.url, name, "rollback", previous["run"], str(adapter), previous["adapter_sha256"],
                               who, previous["gates"], previous["previous_id"])  # fmt: skip
    finally:
        store.close()


def swap(admin: Admin, name: str, adapter: Path) -> None:
    """Load `adapter` under a temporary name (the server's checks), then put it in NAME's place."""
    trial = f"{name[:40]}-next-{uuid.uuid4().hex[:8]}"
    admin.load(trial, adapter)  # a bad adapter fails here; NAME still serves
    try:
        if name in admin.adapters():
            admin.unload(name)
        admin.load(name, adapter)
    finally:
        admin.unload(trial)


def _sha(adapter: Path) -> str:
    return sha256_file(adapter / "adapter_model.safetensors")


def _only_server(registry: Registry, name: str, store: Store) -> str:
    servers = registry.servers_of(name)
    if len(servers) != 1:
        where = ", ".join(servers) if servers else "none"
        raise TunelabError(f"{name!r} is deployed on {len(servers)} server(s) in {_safe(store)} ({where}); "
                           "name one with --server")  # fmt: skip
    return servers[0]


def _safe(store: Store) -> str:
    return store.engine.url.render_as_string(hide_password=True)
