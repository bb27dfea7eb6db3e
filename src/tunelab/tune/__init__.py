"""`tunelab tune`: hyperparameter search over any config key, where every trial is a normal tunelab run.

Built on Optuna: the config's `tune:` section names the space (tunelab.tune.space), the sampler (grid, random,
TPE), the pruner (median, successive halving, Hyperband on the training loop's eval records), the budget (trials,
wall time) and the objectives (an eval metric, time, cost). tunelab.tune.study holds the study (storage, workers,
resume), tunelab.tune.trial one trial, tunelab.tune.report what a search writes, and tunelab.tune.verdict the
question a search must answer last: is the best trial really better than the config as written, on a test split
it never saw (paired bootstrap CIs)? This layer sits above tunelab.api: it drives api.train.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig
from tunelab.tune import report
from tunelab.tune.study import Study, optimize, trials_in
from tunelab.tune.verdict import compare_with_default

__all__ = ["TuneResult", "tune"]


@dataclass
class TuneResult:
    study: str
    root: Path  # the study folder
    counts: dict[str, int]  # trials by state
    best: dict[str, Any] | None = None  # trial, params, values, run
    best_config: Path | None = None
    report: Path | None = None
    verdict: list[str] = field(default_factory=list)


def tune(cfg: RunConfig, config_path: str | Path | None = None, worker: bool = False, log: Any = print) -> TuneResult:
    """Run (or resume, or join) the search of `cfg.tune`; unless `worker`, then write the results and compare the
    best trial with the default config on the test split."""
    where = Study.of(cfg, config_path)
    study = optimize(cfg, where, worker, log)
    counts = {s.lower(): len(trials_in(study, s)) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    result = TuneResult(where.name, where.root, counts)
    if worker:
        return result
    assert cfg.tune is not None
    rows = report.trial_rows(study, cfg.tune)
    report.write_tables(rows, where.root)
    best = report.best_trial(study, cfg.tune)
    if best is not None:
        result.best = {"trial": best.number, "params": best.params, "values": best.values,
                       "run": best.user_attrs.get("run_dir")}  # fmt: skip
        result.best_config = report.write_best(cfg, where.name, best.params, where.root)
    imps = report.importances(study, cfg.tune)
    (where.root / "importances.json").write_text(json.dumps(imps, indent=1) + "\n")
    if cfg.tune.compare and result.best:
        assert result.best_config is not None
        result.verdict = compare_with_default(cfg, where, Path(result.best["run"]), result.best_config, log)
    plot = report.parallel_coordinates(rows, cfg.tune)
    result.report = report.write_html(where.root, f"tunelab tune: {where.name}", rows, imps, plot, result.best,
                                      result.verdict)  # fmt: skip
    return result
