"""`tunelab lineage RUN_OR_NAME`: data files (sha256) -> run -> eval -> exports (sha256, parity) -> deployments,
and the same for the run it was trained from, read from what the run folders and the store already record.

A run's parent is the run it continued (tuning.init_adapter, or a model that is another run's final/ or merged/);
a retrained run also names the feedback export it learned from (retrain.json), whose manifest is checked against
the sha256 recorded at training time. Exports are RUN/exports/*/ (export.json, and verify.json's parity check).
Deployments come from the registry in the store (when one is given or the default exists). A NAME is looked up
in the registry: its deployment history, then the lineage of the run serving under it now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.feedback.export import MANIFEST
from tunelab.feedback.registry import Registry
from tunelab.feedback.retrain import GATES, RECORD
from tunelab.models.loader import is_run_dir, run_of
from tunelab.quality.io import sha256_file
from tunelab.serve.store import Store, default_url

MAX_DEPTH = 16  # a chain of runs, each trained from the previous one


def lineage(target: str, store_url: str | None = None) -> dict[str, Any]:
    """The chain of a run directory, or of the run a deployment name serves now."""
    store = Store(store_url) if store_url or _default_store_exists() else None
    try:
        registry = Registry(store) if store else None
        if is_run_dir(target):
            return run_lineage(Path(target).resolve(), registry)
        history = registry.history(name=target) if registry else []
        if not history:
            where = f"the registry ({_safe(store)})" if store else "no registry (pass --store)"
            raise TunelabError(f"{target}: not a run directory, and no deployment named so in {where}")
        open_rows = [r for r in history if r["until"] is None]
        current = open_rows[-1]["run"] if open_rows else None
        out: dict[str, Any] = {"name": target, "deployments": history, "serving": current}
        if current and is_run_dir(current):
            out["run"] = run_lineage(Path(current), registry)
        return out
    finally:
        if store:
            store.close()


def run_lineage(run: Path, registry: Registry | None, depth: int = 0) -> dict[str, Any]:
    cfg = load_config(run / "config.yaml")
    out: dict[str, Any] = {
        "run": str(run),
        "method": cfg.method.name,
        "tuning": cfg.tuning.mode,
        "model": cfg.model.name_or_path,
        "continues": cfg.tuning.init_adapter,
        "data": [{k: m.get(k) for k in ("path", "sha256", "records")} for m in _json(run / "data_manifest.json", [])],
        "eval": _eval(run),
        "feedback": _feedback(run),
        "exports": _exports(run),
        "deployments": registry.history(run=str(run)) if registry else [],
    }
    parent = _parent(cfg)
    if parent is not None and depth < MAX_DEPTH:
        out["parent"] = run_lineage(parent, registry, depth + 1)
    return out


def _parent(cfg: Any) -> Path | None:
    for name in (cfg.tuning.init_adapter, cfg.model.name_or_path):
        if name:
            p = Path(name)
            run = run_of(p) or (p.parent if p.name == "merged" and is_run_dir(p.parent) else None)
            if run is not None:
                return run.resolve()
    return None


def _eval(run: Path) -> dict[str, Any]:
    final = _json(run / "eval" / "final.json", None)
    cmp = _json(run / "eval" / "comparison.json", None)
    fg = _json(run / "eval" / "forgetting.json", None)
    gates = _json(run / GATES, None)
    return {
        "final": {k: m["scores"] for k, m in final["metrics"].items()} if final else None,
        "vs_base": [
            f"{r['label'] if 'label' in r else r['key']}: {r['value_a']:.4g} -> {r['value_b']:.4g} ({r['verdict']})"
            for r in cmp["rows"]
        ]
        if cmp
        else [],  # fmt: skip
        "forgetting": None
        if fg is None
        else (
            "not applicable" if not fg.get("applicable", True) else "REGRESSION" if fg["regressed"] else "ok"
        ),  # fmt: skip
        "gates": None
        if gates is None
        else {
            "passed": gates["passed"],
            "against": gates["against"],
            "checks": {c["name"]: c["passed"] for c in gates["checks"]},
        },  # fmt: skip
    }


def _feedback(run: Path) -> dict[str, Any] | None:
    record = _json(run / RECORD, None)
    if record is None:
        return None
    manifest_path = Path(record["feedback"]) / MANIFEST
    now = sha256_file(manifest_path) if manifest_path.is_file() else None
    manifest = _json(manifest_path, {})
    return {
        "export": record["feedback"],
        "export_sha256": record["export_sha256"],
        "unchanged": now == record["export_sha256"],  # None when the export is gone
        "store": manifest.get("store"),
        "requests": manifest.get("requests"),
        "reviewers": manifest.get("reviewers"),
        "files": {k: f["sha256"] for k, f in manifest.get("files", {}).items()},
        "kind": record["kind"],
        "from_run": record["from_run"],
    }


def _exports(run: Path) -> list[dict[str, Any]]:
    out = []
    for folder in sorted((run / "exports").glob("*/")) if (run / "exports").is_dir() else []:
        info = _json(folder / "export.json", None)
        if info is None:
            continue
        verify = _json(folder / "verify.json", None)
        files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".gguf")}
        parity = None if verify is None else {k: verify.get(k) for k in ("passed", "max_abs_logit_diff",
                                                                          "greedy_agreement")}  # fmt: skip
        out.append({"folder": str(folder), "format": info.get("format"), "files": files, "parity": parity})
    return out


def _json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def _default_store_exists() -> bool:
    return Path(default_url().removeprefix("sqlite:///")).is_file()


def _safe(store: Store | None) -> str:
    return store.engine.url.render_as_string(hide_password=True) if store else "none"


# --------------------------------------------------------------------------- text


def render(chain: dict[str, Any]) -> str:
    """The chain as indented text, newest first."""
    lines: list[str] = []
    if "name" in chain:
        lines.append(f"name {chain['name']}: serving {chain['serving'] or 'nothing'}")
        lines += [f"  {_dep(d)}" for d in chain["deployments"]]
        chain = chain.get("run") or {}
    depth = 0
    while chain:
        pad = "  " * depth
        lines.append(f"{pad}run {chain['run']} ({chain['method']}, {chain['tuning']}, model {chain['model']}"
                     + (f", continues {chain['continues']}" if chain["continues"] else "") + ")")  # fmt: skip
        lines += [f"{pad}  data {d['path']} sha256 {str(d['sha256'])[:16]} ({d['records']} records)"
                  for d in chain["data"]]  # fmt: skip
        if fb := chain["feedback"]:
            state = {True: "unchanged", False: "CHANGED since training", None: "missing"}[fb["unchanged"]]
            lines.append(f"{pad}  feedback {fb['export']} ({fb['kind']}, {fb['requests']} requests, export.json "
                         f"sha256 {fb['export_sha256'][:16]}: {state}) from run {fb['from_run']}")  # fmt: skip
        ev = chain["eval"]
        lines += [f"{pad}  eval vs base: {row}" for row in ev["vs_base"]]
        if ev["forgetting"]:
            lines.append(f"{pad}  forgetting: {ev['forgetting']}")
        if g := ev["gates"]:
            lines.append(f"{pad}  gates vs {g['against']}: {'passed' if g['passed'] else 'FAILED'} {g['checks']}")
        for e in chain["exports"]:
            files = ", ".join(f"{n} {h[:16]}" for n, h in e["files"].items())
            lines.append(
                f"{pad}  export {e['folder']} ({e['format']}) {files}; parity: {e['parity'] or 'not verified'}"
            )
        lines += [f"{pad}  {_dep(d)}" for d in chain["deployments"]]
        chain, depth = chain.get("parent") or {}, depth + 1
    return "\n".join(lines)


def _dep(d: dict[str, Any]) -> str:
    until = f" until {d['until']}" if d["until"] else " (serving)"
    gates = d["gates"] or {}
    verdict = "skipped" if gates.get("skipped") else "passed" if gates.get("passed") else "none"
    return (f"{d['action']} {d['name']} on {d['server']}: {d['run'] or '(unloaded)'} since {d['since']}{until}, "
            f"by {d['promoted_by']}, gates {verdict}")  # fmt: skip
