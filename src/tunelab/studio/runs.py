"""Run directories as the studio shows them: found under the run folders, read from their own files.

A run is named by its path under a run folder (`sft-lora`, or `stages/1-first` for a stage). What the pages
show comes from the files a run writes (tunelab.train.rundir): config.yaml, metrics.jsonl (each line has
`time` and `total_steps`, so progress and an ETA need nothing else), eval/comparison.json (the base vs the
fine-tuned model with paired-bootstrap CIs) and final/. Nothing here loads a model.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.yamlio import safe_load

CURVES = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s")


class Runs:
    def __init__(self, roots: list[str | Path]) -> None:
        seen: list[Path] = []
        for r in roots:
            p = Path(r).expanduser().resolve()
            if p not in seen:
                seen.append(p)
        self.roots = seen

    def all(self) -> list[tuple[str, Path]]:
        """(name, folder) of every run (a folder with config.yaml), newest first."""
        found: dict[str, Path] = {}
        for root in self.roots:
            for cfg in [*root.glob("*/config.yaml"), *root.glob("*/*/config.yaml")]:
                found.setdefault(cfg.parent.relative_to(root).as_posix(), cfg.parent)
        return sorted(found.items(), key=lambda kv: _mtime(kv[1]), reverse=True)

    def path(self, name: str, known: set[str] = frozenset()) -> Path:  # type: ignore[assignment]
        """The folder of run `name` (it may not exist yet when a queued job will write it: `known` paths)."""
        if not name or ".." in name.split("/") or name.startswith("/"):
            raise TunelabError(f"run {name!r}: not a run name")
        for root in self.roots:
            p = (root / name).resolve()
            if root in p.parents and (p.is_dir() or str(p) in known):
                return p
        raise TunelabError(f"no run {name!r} under {', '.join(map(str, self.roots))}")

    def name_of(self, folder: str | Path) -> str | None:
        p = Path(folder).resolve()
        for root in self.roots:
            if root in p.parents:
                return p.relative_to(root).as_posix()
        return None


def summary(name: str, run: Path) -> dict[str, Any]:
    """One row of the runs list."""
    cfg = read_config(run)
    recs = read_records(run)
    losses = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "eval_loss" in r]
    return {
        "name": name, "path": str(run), "status": file_status(run), "updated": _mtime(run),
        "method": _get(cfg, "method", "name"), "tuning": _get(cfg, "tuning", "mode"),
        "model": _get(cfg, "model", "name_or_path"), **progress(recs),
        "last_loss": losses[-1]["loss"] if losses else None, "last_eval_loss": evals[-1]["eval_loss"] if evals else None,
    }  # fmt: skip


def file_status(run: Path) -> str:
    if (run / "final").is_dir():
        return "finished"
    if (run / ".starting").is_file():
        return "starting"
    return "stopped" if (run / "checkpoints").is_dir() else "incomplete"


def read_config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    try:
        data = safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError, TunelabError):
        return {}
    return data if isinstance(data, dict) else {}


def read_records(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a line cut short by a writer mid-line is left for the next read."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def progress(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Step, total, tokens/s and the ETA from the records' own times: the median time per step over the latest
    logged intervals (median: the pause of a stopped and resumed run does not count)."""
    train = [r for r in recs if "loss" in r and isinstance(r.get("time"), int | float)]
    step = max((int(r["step"]) for r in recs), default=0)
    total = next((r["total_steps"] for r in reversed(recs) if r.get("total_steps")), None)
    tail = train[-21:]
    per_step = [
        (b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(tail, tail[1:]) if b["step"] > a["step"]
    ]
    eta = float(statistics.median(per_step)) * max(0, total - step) if per_step and total else None
    tps = train[-1].get("tokens_per_s") if train else None
    return {"step": step, "total_steps": total, "eta_s": eta, "tokens_per_s": tps}


def curves(recs: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """name -> [[step, value], ...] for each curve the records have (the last value of a step wins)."""
    out: dict[str, dict[int, float]] = {c: {} for c in CURVES}
    for r in recs:
        for c in CURVES:
            v = r.get(c)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[c][int(r["step"])] = float(v)
    return {c: [[s, v] for s, v in sorted(pts.items())] for c, pts in out.items() if pts}


def comparison(run: Path) -> dict[str, Any] | None:
    """The run's base-vs-fine-tuned comparison (eval/comparison.json), or None."""
    path = run / "eval" / "comparison.json"
    try:
        return dict(json.loads(path.read_text())) if path.is_file() else None
    except (OSError, ValueError):
        return None


def config_diff(configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The config keys (dotted) whose values differ between the runs, with each run's value."""
    flat = {name: _flatten(cfg) for name, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    rows = []
    for k in keys:
        values = [flat[name].get(k) for name in configs]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            rows.append({"key": k, "values": values})
    return rows


def flipped_regressions_first(flipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(flipped, key=lambda f: (f.get("direction") != "regressed", f.get("key", ""), f.get("index", 0)))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _get(cfg: dict[str, Any], section: str, key: str) -> Any:
    sec = cfg.get(section)
    return sec.get(key) if isinstance(sec, dict) else None


def _mtime(p: Path) -> float:
    m = p / "metrics.jsonl"
    try:
        return (m if m.is_file() else p).stat().st_mtime
    except OSError:
        return 0.0
