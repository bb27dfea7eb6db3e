"""Experiment trackers (`train.trackers`: tensorboard, mlflow, wandb) on accelerate's tracker classes.

The Accelerator is built before the run directory is chosen, so the trackers are made here once it exists
and added to `acc.trackers`: the loop's `acc.log` then reaches them. Main process only. A run logs its
resolved config (TensorBoard hparams, mlflow params, wandb config), the loop's metrics, and at the end the
base-vs-fine-tuned comparison and the forgetting check as metrics (wandb: summary), with the report,
config.yaml and eval/*.json as artifacts (mlflow artifacts, wandb run files; TensorBoard gets a text table).
Every tracker is ended with the run's outcome (FAILED, KILLED on Ctrl-C), also when training raised. The
tracker run ids are kept in RUN/tracking.json, so --resume continues the same mlflow and wandb run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

from tunelab.config import RunConfig
from tunelab.errors import TunelabError
from tunelab.train.loop import TrainingInterrupted

IDS_FILE = "tracking.json"
ARTIFACTS = ("report.md", "report.html", "config.yaml", "eval/comparison.json", "eval/final.json",
             "eval/baseline.json", "eval/forgetting.json")  # fmt: skip
DB_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")  # mlflow's SQLAlchemy store: needs alembic too


@dataclass(frozen=True)
class Identity:
    project: str
    run_name: str
    tags: dict[str, str]


def identity(cfg: RunConfig, run_dir: Path, config_path: str | Path | None) -> Identity:
    t = cfg.train.tracking
    project = t.project or (Path(config_path).stem if config_path else "tunelab")
    return Identity(project, t.run_name or cfg.output.name or run_dir.name, dict(t.tags))


def check_installed(cfg: RunConfig) -> None:
    """Refuse before training when a tracker's package is missing (accelerate would skip it without a word)."""
    for name in cfg.train.trackers:
        if importlib.util.find_spec(name) is None:
            raise TunelabError(f"train.trackers: {name} is not installed; pip install 'tunelab[trackers]' "
                               f"(or pip install {name})")  # fmt: skip
    uri = mlflow_uri(cfg) if "mlflow" in cfg.train.trackers else ""
    if uri.startswith(DB_SCHEMES):
        missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            raise TunelabError(f"train.tracking.uri {uri}: mlflow's database store needs {' and '.join(missing)}; "
                               "pip install 'tunelab[trackers]' (or the full mlflow package)")  # fmt: skip


def mlflow_uri(cfg: RunConfig) -> str:
    """train.tracking.uri, else MLFLOW_TRACKING_URI, else one sqlite database for all runs under output.dir."""
    uri = cfg.train.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(Path(cfg.output.dir) / 'mlflow.db').resolve()}"
    return str(Path(uri).expanduser().resolve()) if _is_folder(uri) and not uri.startswith("file:") else uri


def _is_folder(uri: str) -> bool:
    """A path or file: URI (mlflow's file store); not sqlite:, http(s):// and the like, nor the word databricks."""
    scheme = urlparse(uri).scheme
    return scheme == "file" or (scheme == "" and not uri.startswith("databricks"))


def _artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside an sqlite database (mlflow's own default is ./mlruns
    of whatever folder the run started in); a file store or a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts")
    return None


# ----------------------------------------------------------------------------------------- per tracker


def _make_tensorboard(ident: Identity, cfg: RunConfig, run_dir: Path, run_id: str | None) -> Any:
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker("tensorboard", str(run_dir))  # event files in RUN/tensorboard/


def _make_mlflow(ident: Identity, cfg: RunConfig, run_dir: Path, run_id: str | None) -> Any:
    import mlflow
    from accelerate.tracking import MLflowTracker

    uri = mlflow_uri(cfg)
    if _is_folder(uri):  # mlflow refuses its (maintenance-mode) file store unless asked; a folder uri asks for it
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).resolve().parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return MLflowTracker(experiment_name=ident.project, logging_dir=_artifact_root(uri), run_id=run_id,
                         tags=ident.tags or None, run_name=ident.run_name)  # fmt: skip


def _make_wandb(ident: Identity, cfg: RunConfig, run_dir: Path, run_id: str | None) -> Any:
    from accelerate.tracking import WandBTracker

    kwargs: dict[str, Any] = {"name": ident.run_name, "tags": [f"{k}:{v}" if v else k for k, v in ident.tags.items()]}
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = str(run_dir)  # RUN/wandb/ rather than ./wandb of whatever folder the run started in
    if run_id:
        kwargs |= {"id": run_id, "resume": "allow"}
    return WandBTracker(ident.project, **kwargs)  # accelerate passes its first argument as wandb's project


def _started_tensorboard(tracker: Any, ident: Identity, run_dir: Path) -> str | None:
    if ident.tags:
        tracker.writer.add_text("tags", "\n".join(f"- {k}: {v}" for k, v in ident.tags.items()))
    return None


def _started_mlflow(tracker: Any, ident: Identity, run_dir: Path) -> str | None:
    import mlflow

    mlflow.set_tag("tunelab.run_dir", str(run_dir.resolve()))
    return str(tracker.active_run.info.run_id)


def _started_wandb(tracker: Any, ident: Identity, run_dir: Path) -> str | None:
    tracker.run.config.update({"tunelab_run_dir": str(run_dir.resolve())}, allow_val_change=True)
    return str(tracker.run.id)


def _results_tensorboard(tracker: Any, run_dir: Path, values: dict[str, float], step: int) -> None:
    tracker.log(values, step=step)
    if table := comparison_table(run_dir):
        tracker.writer.add_text("comparison", table, global_step=step)
    tracker.writer.flush()


def _results_mlflow(tracker: Any, run_dir: Path, values: dict[str, float], step: int) -> None:
    tracker.log(values, step=step)
    for rel in ARTIFACTS:
        if (run_dir / rel).is_file():
            parent = str(Path(rel).parent)
            tracker.log_artifact(str(run_dir / rel), artifact_path=None if parent == "." else parent)


def _results_wandb(tracker: Any, run_dir: Path, values: dict[str, float], step: int) -> None:
    tracker.run.summary.update(values)  # one value per score, not a history point
    for rel in ARTIFACTS:  # not config.yaml: wandb keeps the run's config under that name in the same folder
        if rel != "config.yaml" and (run_dir / rel).is_file():
            tracker.run.save(str(run_dir / rel), base_path=str(run_dir), policy="now")


def _end_tensorboard(tracker: Any, status: str) -> None:
    tracker.finish()


def _end_mlflow(tracker: Any, status: str) -> None:
    import mlflow

    mlflow.end_run(status=status)


def _end_wandb(tracker: Any, status: str) -> None:
    tracker.run.finish(exit_code=0 if status == "FINISHED" else 1)


class Adapter(NamedTuple):
    make: Callable[[Identity, RunConfig, Path, str | None], Any]
    nested_config: bool  # wandb shows a nested config; TensorBoard hparams and mlflow params need flat scalars
    started: Callable[[Any, Identity, Path], str | None]  # extras after start; returns the run id to resume
    results: Callable[[Any, Path, dict[str, float], int], None]
    end: Callable[[Any, str], None]


ADAPTERS: dict[str, Adapter] = {
    "tensorboard": Adapter(_make_tensorboard, False, _started_tensorboard, _results_tensorboard, _end_tensorboard),
    "mlflow": Adapter(_make_mlflow, False, _started_mlflow, _results_mlflow, _end_mlflow),
    "wandb": Adapter(_make_wandb, True, _started_wandb, _results_wandb, _end_wandb),
}


# ----------------------------------------------------------------------------------------- the run


@contextmanager
def tracked(acc: Any, cfg: RunConfig, run_dir: Path, config_path: str | Path | None, resume: bool,
            step: Callable[[], int]) -> Iterator[None]:  # fmt: skip
    """Trackers open for the body; closed with its outcome (and whatever results it left) however it ends."""
    if not cfg.train.trackers or not acc.is_main_process:
        yield
        return
    tracking = Tracking(acc, run_dir)
    try:
        tracking.start(cfg, identity(cfg, run_dir, config_path), resume)
        yield
    except BaseException as e:
        tracking.close(step(), e)
        raise
    tracking.close(step(), None)


class Tracking:
    def __init__(self, acc: Any, run_dir: Path) -> None:
        self.acc, self.run_dir = acc, run_dir
        self.open: list[tuple[str, Any]] = []

    def start(self, cfg: RunConfig, ident: Identity, resume: bool) -> None:
        ids_path = self.run_dir / IDS_FILE
        ids = json.loads(ids_path.read_text()) if resume and ids_path.is_file() else {}
        nested = cfg.model_dump(mode="json")
        for name in cfg.train.trackers:
            adapter = ADAPTERS[name]
            tracker = adapter.make(ident, cfg, self.run_dir, ids.get(name))
            tracker.start()
            self.open.append((name, tracker))
            self.acc.trackers.append(tracker)
            tracker.store_init_configuration(nested if adapter.nested_config else flat(nested))
            if run_id := adapter.started(tracker, ident, self.run_dir):
                ids[name] = run_id
        ids_path.write_text(json.dumps({**ids, "project": ident.project, "run_name": ident.run_name}, indent=1))

    def close(self, step: int, error: BaseException | None) -> None:
        """Log the results the run left (a failed run's too: whatever exists), then end every tracker; a tracker
        that fails here is reported without hiding the run's own outcome or leaving the others open."""
        status = "FINISHED" if error is None else "KILLED" if _interrupted(error) else "FAILED"
        values = results(self.run_dir)
        for name, tracker in self.open:
            adapter = ADAPTERS[name]
            _warn_on_error(name, "logging the results", adapter.results, tracker, self.run_dir, values, step)
            _warn_on_error(name, "ending the run", adapter.end, tracker, status)
            if tracker in self.acc.trackers:
                self.acc.trackers.remove(tracker)
        self.open.clear()


def _warn_on_error(name: str, what: str, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as e:  # one tracker's failure must not stop the others, nor turn a saved run into a failure
        print(f"warning: tracker {name}: {what} failed: {type(e).__name__}: {e}", file=sys.stderr)


def _interrupted(error: BaseException) -> bool:
    return isinstance(error, TrainingInterrupted | KeyboardInterrupt)


# ----------------------------------------------------------------------------------------- what is logged


def results(run_dir: Path) -> dict[str, float]:
    """The run's evaluation as flat metrics: compare/<score>/{base,fine_tuned,diff,ci_low,ci_high,significant}
    from eval/comparison.json, final/<metric>/<score> from eval/final.json, forgetting/* from eval/forgetting.json."""
    out: dict[str, float] = {}
    cmp, final, forgetting = (_read(run_dir / "eval" / f) for f in ("comparison.json", "final.json", "forgetting.json"))
    for row in (cmp or {}).get("rows", []):
        base = f"compare/{row['label']}"
        out |= {f"{base}/base": row["value_a"], f"{base}/fine_tuned": row["value_b"], f"{base}/diff": row["diff"],
                f"{base}/ci_low": row["ci_low"], f"{base}/ci_high": row["ci_high"],
                f"{base}/significant": float(row["significant"])}  # fmt: skip
    for metric, res in (final or {}).get("metrics", {}).items():
        out |= {f"final/{metric}/{k}": float(v) for k, v in res.get("scores", {}).items() if _number(v)}
    out |= {f"forgetting/{k}": float(v) for k, v in (forgetting or {}).items() if _number(v)}
    return out


def comparison_table(run_dir: Path) -> str | None:
    """The base-vs-fine-tuned table as markdown (TensorBoard's text tab renders it)."""
    cmp, forgetting = _read(run_dir / "eval" / "comparison.json"), _read(run_dir / "eval" / "forgetting.json")
    if not cmp and not forgetting:
        return None
    lines = ["| score | base | fine-tuned | difference (95% CI) | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['value_a']:.4g} | {r['value_b']:.4g} | {r['diff']:+.4g} "
              f"({r['ci_low']:+.4g} to {r['ci_high']:+.4g}) | {r['verdict']} |" for r in (cmp or {}).get("rows", [])]  # fmt: skip
    if forgetting and _number(forgetting.get("before")) and _number(forgetting.get("after")):
        verdict = "REGRESSION" if forgetting.get("regressed") else "ok"
        lines.append(f"\nforgetting check: general-text perplexity {forgetting['before']:.4g} -> "
                     f"{forgetting['after']:.4g} ({verdict})")  # fmt: skip
    return "\n".join(lines)


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """TensorBoard hparams and mlflow params want flat scalar values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _number(v: Any) -> bool:
    return isinstance(v, int | float)  # bools too: regressed, significant
