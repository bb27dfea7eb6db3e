"""A finished job's result files (purpose `fine-tune-results`, downloadable through /v1/files):

  step_metrics.csv         one row per logged step: step, train_loss, valid_loss, learning_rate, grad_norm,
                           tokens_per_s (OpenAI's result file has step, train_loss and valid_loss too)
  base_vs_fine_tuned.json  the run's evaluation before and after training on the validation file, compared
                           with paired-bootstrap 95% CIs (RUN/eval/comparison.json), the forgetting check,
                           or the reason there is none (no validation_file)

and one event line per compared score, so `list_events` shows the verdict too.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tunelab.studio.store import JobStore, new_id
from tunelab.train.rundir import read_metrics

COLUMNS = {"loss": "train_loss", "eval_loss": "valid_loss", "lr": "learning_rate", "grad_norm": "grad_norm",
           "tokens_per_s": "tokens_per_s"}  # fmt: skip


def write(store: JobStore, job: dict[str, Any], run_dir: Path, files_dir: Path) -> tuple[list[str], list[str]]:
    """(file ids, event lines)."""
    comparison, lines = comparison_of(run_dir)
    made = [
        _add(store, job, files_dir, "step_metrics.csv", metrics_csv(run_dir)),
        _add(store, job, files_dir, "base_vs_fine_tuned.json", json.dumps(comparison, indent=1, ensure_ascii=False)),
    ]
    return made, lines


def metrics_csv(run_dir: Path) -> str:
    steps: dict[int, dict[str, Any]] = {}
    for rec in read_metrics(run_dir):
        row = steps.setdefault(int(rec["step"]), {"step": int(rec["step"])})
        row.update({COLUMNS[k]: v for k, v in rec.items() if k in COLUMNS})
    out = io.StringIO()
    w = csv.DictWriter(out, ["step", *COLUMNS.values()], lineterminator="\n")
    w.writeheader()
    for step in sorted(steps):
        w.writerow(steps[step])
    return out.getvalue()


def comparison_of(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    ev = run_dir / "eval"
    cmp = _json(ev / "comparison.json")
    out = {"run_dir": str(run_dir), "comparison": cmp, "forgetting": _json(ev / "forgetting.json")}
    if cmp is None:
        out["why_none"] = "no comparison: the job had no validation_file (the before/after evaluation runs on it)"
        return out, []
    lines = [f"Base vs fine-tuned on the validation file: {row_line(r)}" for r in cmp.get("rows", [])]
    return out, lines


def row_line(r: dict[str, Any]) -> str:
    return (f"{r['label']} {r['value_a']:.4g} -> {r['value_b']:.4g} ({r['diff']:+.4g}, 95% CI "
            f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}], {r['verdict']})")  # fmt: skip


def trained_tokens(run_dir: Path) -> int | None:
    counts = [v for rec in read_metrics(run_dir) for k, v in rec.items() if k == "trained_tokens"]
    return int(counts[-1]) if counts else None


def _add(store: JobStore, job: dict[str, Any], files_dir: Path, name: str, text: str) -> str:
    file_id = new_id("file")
    path = files_dir / file_id / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    store.add_file(id=file_id, filename=name, purpose="fine-tune-results", bytes=path.stat().st_size,
                   path=str(path), format=None, records=None, owner=job["owner"])  # fmt: skip
    return file_id


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
