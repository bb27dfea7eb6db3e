"""One trial: a normal tunelab run of the config with the trial's parameters, in <output.dir>/<study>/trial-NNNN.

The run is `tunelab.api.train` as `tunelab train` runs it (same run folder, metrics, checkpoints, report), with
two changes that every trial shares: no baseline evaluation (the base model is the same for every trial) and the
closing evaluation on the validation data (data.eval), never on eval.data, which is kept as the test split for
comparing the best trial with the default config once the search is over. Intermediate eval records reach the
pruner through the loop's Hooks.on_log; a pruned trial raises optuna.TrialPruned out of the loop and keeps its
run folder (config, metrics, checkpoints) with trial.json saying so. Every trial folder has trial.json: its
state, parameters, values and seconds.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunelab import api
from tunelab.config import RunConfig, TuneObjective, format_validation_error
from tunelab.errors import ConfigError, TunelabError
from tunelab.methods import check_run
from tunelab.stages import available_metrics
from tunelab.tune import space

TRIAL_FILE = "trial.json"


def label(run_dir: Path, info: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / TRIAL_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")


def read_label(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRIAL_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run_config(base: dict[str, Any], params: dict[str, Any], name: str, where: str) -> RunConfig:
    """The validated config of one run: `base` with `params` applied and output.name `name`."""
    raw = space.apply(base, params)
    raw["output"] |= {"name": name, "overwrite": True}
    try:
        return check_run(RunConfig.model_validate(raw))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def trial_config(base: dict[str, Any], params: dict[str, Any], study: str, number: int) -> RunConfig:
    raw = space.apply(base, params)
    raw["eval"] |= {"baseline": False, "data": []}
    return run_config(raw, {}, f"{study}/trial-{number:04d}", f"trial {number} ({_show(params)})")


def objective_value(metric: str, run_dir: Path, seconds: float, price_per_hour: float | None) -> float:
    if metric == "time":
        return seconds
    if metric == "cost":
        return seconds / 3600 * (price_per_hour or 0.0)
    measured = available_metrics(run_dir)
    if metric not in measured:
        known = ", ".join(sorted(measured)) or "none (no eval ran: set data.eval or data.eval_ratio)"
        raise TunelabError(f"tune.objectives: {metric!r} was not measured in {run_dir}; measured: {known}")
    return float(measured[metric])


class Objective:
    """Optuna's objective: sample, train, score. Also the per-trial progress line (`done`, a study callback)."""

    def __init__(self, cfg: RunConfig, study: str, base: dict[str, Any], log: Callable[[str], None]) -> None:
        assert cfg.tune is not None
        self.tune, self.study, self.base, self.log = cfg.tune, study, base, log
        self.max_steps = cfg.train.max_steps

    def __call__(self, trial: Any) -> float | list[float]:
        params = space.sample(trial, self.tune.space, self.base)
        cfg = trial_config(self.base, params, self.study, trial.number)
        run_dir = Path(cfg.output.dir) / str(cfg.output.name)
        info = {"study": self.study, "trial": trial.number, "state": "running", "params": params,
                "pid": os.getpid(), "host": socket.gethostname()}  # fmt: skip
        for k in ("pid", "host"):
            trial.set_user_attr(k, info[k])
        trial.set_user_attr("run_dir", str(run_dir))
        label(run_dir, info)
        start = time.perf_counter()
        try:
            api.train(cfg, hooks=api.Hooks(on_log=self._reporter(trial)))
        except BaseException as e:
            info |= {"seconds": round(time.perf_counter() - start, 2)} | self._failure(trial, e)
            trial.set_user_attr("seconds", info["seconds"])
            label(run_dir, info)
            raise
        seconds = time.perf_counter() - start
        trial.set_user_attr("seconds", round(seconds, 2))
        values = [objective_value(o.metric, run_dir, seconds, self.tune.price_per_hour) for o in self.tune.objectives]
        label(run_dir, info | {"state": "complete", "values": values, "seconds": round(seconds, 2)})
        return values[0] if len(values) == 1 else values

    def _failure(self, trial: Any, e: BaseException) -> dict[str, Any]:
        from optuna import TrialPruned

        if isinstance(e, TrialPruned):
            trial.set_user_attr("why", str(e))
            return {"state": "pruned", "why": str(e)}
        if isinstance(e, api.TrainingInterrupted):
            trial.set_user_attr("interrupted", True)  # the next `tunelab tune` runs these parameters again
            return {"state": "interrupted", "why": str(e)}
        trial.set_user_attr("error", str(e)[:2000])
        return {"state": "failed", "why": f"{type(e).__name__}: {e}"}

    def _reporter(self, trial: Any) -> Callable[[dict[str, Any]], None] | None:
        """Hooks.on_log: eval records -> trial.report; raise TrialPruned when the pruner says so."""
        if len(self.tune.objectives) > 1 or self.tune.pruner.kind == "none":
            return None
        from optuna import TrialPruned

        metric = self.tune.prune_metric()
        first = self.tune.objectives[0]
        same = first.resolved_direction() == TuneObjective(metric=metric).resolved_direction()
        sign = 1.0 if same else -1.0  # the pruner compares in the study's direction

        def on_log(rec: dict[str, Any]) -> None:
            if metric not in rec:
                return
            step = int(rec["step"])
            trial.report(sign * float(rec[metric]), step)
            if (self.max_steps is None or step < self.max_steps) and trial.should_prune():
                raise TrialPruned(f"pruned at step {step}: {metric} {float(rec[metric]):.4g}")

        return on_log

    def done(self, study: Any, t: Any) -> None:
        """A line per finished trial (this process's)."""
        if t.user_attrs.get("pid") != os.getpid():
            return
        state = t.state.name.lower()
        values = ", ".join(f"{o.metric} {v:.4g}" for o, v in zip(self.tune.objectives, t.values or []))
        tail = values or t.user_attrs.get("error", "")
        if state == "pruned":
            tail = t.user_attrs.get("why", "")
        self.log(f"trial {t.number} {state}{': ' + tail if tail else ''}  ({_show(t.params)})")


def _show(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
