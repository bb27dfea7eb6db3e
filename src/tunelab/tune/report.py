"""What a search leaves in its study folder: trials.csv and trials.md (every trial: state, parameters, values,
seconds, run folder; with several objectives, whether it is on the Pareto front), best.yaml (the config with the
best trial's parameters, ready for `tunelab train`), importances.json (parameter importances by Optuna's default
evaluator over the complete trials) and report.html: the trials table, the Pareto front, the importances, a
parallel-coordinates plot (one line per trial across the parameters, coloured by the first objective) and the
best-vs-default comparison on the test split. One self-contained file (plots inlined as PNG data URIs, no scripts,
no CDN).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import warnings
from html import escape
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, TuneConfig, dump_config
from tunelab.eval.report_html import CSS
from tunelab.tune import space
from tunelab.tune.trial import run_config


def trial_rows(study: Any, tune: TuneConfig) -> list[dict[str, Any]]:
    """One dict per trial, in trial order: number, state, each parameter, each objective, seconds, run folder."""
    keys = list(tune.space)
    front = {t.number for t in study.best_trials} if len(tune.objectives) > 1 else set()
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
        row |= {k: t.params.get(k, "") for k in keys}
        values = t.values or []
        row |= {o.metric: values[i] if i < len(values) else "" for i, o in enumerate(tune.objectives)}
        if len(tune.objectives) > 1:  # the Pareto front: no other complete trial is as good on all and better on one
            row["pareto"] = "yes" if t.number in front else ""
        row["pruned_at_step"] = t.last_step if t.state.name == "PRUNED" else ""
        row["seconds"] = t.user_attrs.get("seconds", "")
        row["run"] = t.user_attrs.get("run_dir", "")
        rows.append(row)
    return rows


def best_trial(study: Any, tune: TuneConfig) -> Any | None:
    """The best finished trial: single objective, Optuna's best; several, the Pareto front's best on the first."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not done:
        return None
    if len(tune.objectives) == 1:
        return study.best_trial
    sign = 1 if tune.objectives[0].resolved_direction() == "minimize" else -1
    return min(study.best_trials, key=lambda t: sign * t.values[0])


def write_tables(rows: list[dict[str, Any]], root: Path) -> tuple[Path, Path]:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with (root / "trials.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    (root / "trials.md").write_text("\n".join(md) + "\n")
    return root / "trials.csv", root / "trials.md"


def write_best(cfg: RunConfig, study_name: str, params: dict[str, Any], root: Path) -> Path:
    """best.yaml: the config as written, with the best trial's parameters, no tune section, its own run name."""
    best = run_config(space.base_raw(cfg), params, f"{study_name}/best", "best.yaml")
    head = "".join(f"#   {k}: {v!r}\n" for k, v in params.items())
    path = root / "best.yaml"
    path.write_text(f"# The best trial's parameters applied to the tuned config:\n{head}# Train it with:\n"
                    f"#   tunelab train {path}\n{dump_config(best)}")  # fmt: skip
    return path


def importances(study: Any, tune: TuneConfig) -> dict[str, float]:
    """Importances (Optuna's default evaluator) over the complete trials, for the first objective in its direction;
    {} when there are too few to say."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len({tuple(sorted(t.params.items())) for t in done}) < 2:  # Optuna would share 1.0 out equally
        return {}
    target = None  # one objective: Optuna reads the study's direction
    if len(tune.objectives) > 1:  # a target is taken as lower-is-better, whatever the study's direction
        sign = 1.0 if tune.objectives[0].resolved_direction() == "minimize" else -1.0
        target = lambda t: sign * t.values[0]  # noqa: E731
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            imps = dict(optuna.importance.get_param_importances(study, target=target))
    except (ValueError, RuntimeError, ZeroDivisionError):  # nothing varied
        return {}
    # PED-ANOVA (Optuna's default) says so when its best trials are all the trials: it returns equal shares then,
    # which would read as a finding
    return {} if any("importances will be equal" in str(w.message) for w in caught) else imps


def parallel_coordinates(rows: list[dict[str, Any]], tune: TuneConfig) -> str | None:
    """One line per complete or pruned trial across the parameter axes (each scaled to [0, 1], log where the
    parameter is log), coloured by the first objective; pruned trials grey. A base64 PNG, or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, first = list(tune.space), tune.objectives[0].metric
    shown = [r for r in rows if r["state"] in ("complete", "pruned")]
    if not shown or not keys:
        return None
    done = [float(r[first]) for r in shown if r["state"] == "complete" and r[first] != ""]
    lo, hi = (min(done), max(done)) if done else (0.0, 1.0)
    cmap = plt.get_cmap("viridis_r" if tune.objectives[0].resolved_direction() == "minimize" else "viridis")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(keys)), 4))
    for r in shown:
        ys = [_scaled(k, r[k], tune) for k in keys]
        xs = [i for i, y in enumerate(ys) if y is not None]
        ys_ = [y for y in ys if y is not None]
        if r["state"] == "complete" and r[first] != "":
            ax.plot(xs, ys_, color=cmap((float(r[first]) - lo) / ((hi - lo) or 1.0)), lw=1.6, alpha=0.9)
        else:
            ax.plot(xs, ys_, color="#aaaaaa", lw=0.8, ls="--", alpha=0.8)
    ax.set_xticks(range(len(keys)), [_axis_label(k, tune) for k in keys], fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    ax.set_title(f"trials across the parameters (colour: {first}; grey dashed: pruned)", fontsize=10)
    for i in range(len(keys)):
        ax.axvline(i, color="#333", lw=0.6)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(sm, ax=ax, label=first)
    return _png(fig)


def _scaled(key: str, value: Any, tune: TuneConfig) -> float | None:
    p = tune.space[key]
    if value == "":
        return None  # a conditional parameter this trial did not sample
    if p.type == "categorical" or p.values:
        choices = list(p.choices or p.values or [])
        return choices.index(value) / max(len(choices) - 1, 1) if value in choices else None
    assert p.low is not None and p.high is not None
    if p.log:
        return (math.log(float(value)) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
    return (float(value) - p.low) / (p.high - p.low)


def _axis_label(key: str, tune: TuneConfig) -> str:
    p = tune.space[key]
    if p.type == "categorical" or p.values:
        return f"{key}\n{' | '.join(map(str, p.choices or p.values or []))}"
    return f"{key}\n{p.low:g} .. {p.high:g}{' (log)' if p.log else ''}"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_html(root: Path, title: str, rows: list[dict[str, Any]], imps: dict[str, float], plot: str | None,
               best: dict[str, Any] | None, verdict: list[str]) -> Path:  # fmt: skip
    cols = list(dict.fromkeys(k for r in rows for k in r))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"]  # fmt: skip
    if best:
        parts.append(
            f"<h2>Best trial: {best['trial']}</h2><pre>{escape(json.dumps(best, indent=1, default=str))}</pre>"
        )
    if rows and "pareto" in rows[0]:
        front = [str(r["trial"]) for r in rows if r["pareto"] == "yes"]
        done = sum(r["state"] == "complete" for r in rows)
        parts.append(f"<h2>Pareto front ({len(front)} of {done} complete trials: no other is as good on every "
                     f"objective and better on one)</h2><p>trials {escape(', '.join(front))}; best.yaml takes the "
                     "one with the best first objective</p>")  # fmt: skip
    if verdict:
        parts.append("<h2>Best vs default on the test split</h2><pre>" + escape("\n".join(verdict)) + "</pre>")
    if imps:
        parts.append("<h2>Parameter importances</h2><table><tr><th>parameter</th><th>importance</th></tr>")
        parts += [f"<tr><td>{escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in imps.items()]
        parts.append("</table>")
    else:
        parts.append("<p>Parameter importances: too few complete trials to tell the parameters apart.</p>")
    if plot:
        parts.append(
            f'<h2>Parallel coordinates</h2><img alt="parallel coordinates" src="data:image/png;base64,{plot}">'
        )
    parts.append("<h2>Trials</h2><table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "</tr>")
    for r in rows:
        parts.append("<tr>" + "".join(f"<td>{escape(_cell(r.get(c, '')))}</td>" for c in cols) + "</tr>")
    parts.append("</table></body></html>")
    path = root / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path
