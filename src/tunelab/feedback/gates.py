"""The gates a retrained run must pass before it may replace the run it came from.

They read the paired comparison of the run being replaced (A) and the retrained run (B) on the same eval sets
with the same decoding (tunelab.eval.compare: paired bootstrap 95% CIs), per task:

- feedback_gain: on the held-out slice of the feedback (task `feedback`), the gate metric is significantly
  better (its CI excludes zero, in the metric's good direction);
- no_regression:<task>: on every eval set of the original run, the gate metric is not significantly worse
  (a task without that metric is judged on its loss);
- forgetting: the general-text perplexity check of A -> B did not regress (when it applies and ran).

The gate metric is `metric` when given, else the first of PREFERRED the feedback slice was scored with, else its
first score that is not a loss, else its loss. Gates are facts about two evaluations; nothing here trains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.errors import TunelabError

FEEDBACK_TASK = "feedback"
PREFERRED = ("json_field_accuracy", "exact_match", "accuracy", "f1", "rougeL", "score", "chrf", "bleu")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class GateReport:
    passed: bool
    metric: str
    against: str  # the run being replaced
    candidate: str  # the retrained run
    checks: list[Check] = field(default_factory=list)
    feedback_row: dict[str, Any] | None = None  # the feedback slice's comparison row (gain and CI)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GateReport:
        return cls(**{**raw, "checks": [Check(**c) for c in raw["checks"]]})


def rows_by_task(comparison: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> key -> row; a single-task comparison's rows sit under the task ''."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in comparison["rows"]:
        task, sep, _ = row["metric"].rpartition("/")
        out.setdefault(task if sep else "", {})[row["key"]] = row
    return out


def gate_metric(rows: dict[str, dict[str, Any]], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in rows:
            raise TunelabError(f"--gate-metric {wanted}: the feedback slice was scored with {', '.join(rows)}")
        return wanted
    return next((k for k in PREFERRED if k in rows), None) or next((k for k in rows if k != "loss"), "loss")


def line(row: dict[str, Any]) -> str:
    return (f"{row['value_a']:.4g} -> {row['value_b']:.4g}, diff {row['diff']:+.4g}, "
            f"95% CI [{row['ci_low']:+.4g}, {row['ci_high']:+.4g}], n={row['n']}: {row['verdict']}")  # fmt: skip


def judge(comparison: dict[str, Any], forgetting: dict[str, Any] | None, against: str, candidate: str,
          metric: str | None = None) -> GateReport:  # fmt: skip
    """Every gate on one comparison (A = `against`, B = `candidate`)."""
    tasks = rows_by_task(comparison)
    if FEEDBACK_TASK not in tasks:
        raise TunelabError(f"the comparison has no {FEEDBACK_TASK!r} task (tasks: {', '.join(tasks) or 'none'}); "
                           "the retrain evaluates a held-out slice of the feedback under that name")  # fmt: skip
    key = gate_metric(tasks[FEEDBACK_TASK], metric)
    gain = tasks[FEEDBACK_TASK][key]
    checks = [Check("feedback_gain", gain["verdict"] == "better", f"{key} on the held-out feedback: {line(gain)}")]
    for task, rows in tasks.items():
        if task == FEEDBACK_TASK:
            continue
        row = rows.get(key) or rows.get("loss")
        if row is None:
            checks.append(Check(f"no_regression:{task}", True, f"neither {key} nor loss was measured: not checked"))
            continue
        checks.append(Check(f"no_regression:{task}", row["verdict"] != "worse", f"{row['key']}: {line(row)}"))
    checks.append(_forgetting(forgetting))
    return GateReport(all(c.passed for c in checks), key, against, candidate, checks, gain)


def _forgetting(fg: dict[str, Any] | None) -> Check:
    if fg is None:
        return Check("forgetting", True, "not run (eval.forgetting.enabled is false)")
    change = f"general-text perplexity {fg['before']:.4g} -> {fg['after']:.4g} ({fg['relative_change']:+.1%})"
    if not fg.get("applicable", True):
        return Check("forgetting", True, f"{change}: not applicable ({fg.get('reason', '')})")
    verdict = "REGRESSION" if fg["regressed"] else "ok"
    return Check("forgetting", not fg["regressed"], f"{change}, threshold +{fg['threshold']:.0%}: {verdict}")
