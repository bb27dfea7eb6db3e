"""Run reports: report.md and a self-contained report.html (plots embedded as base64 PNG, no external files).

The input is `ReportData`, plain data that any code can fill; `collect_run` fills it from a run directory:
  metrics.jsonl        training log lines {"step", "loss"?, "eval_loss"?}
  config.yaml          the resolved config
  data_card.md         the data check's card (sources, hashes, counts, what the checks found)
  data_manifest.json   the data manifest (sha256 of inputs; manifest.json in older runs)
  eval/baseline.json   EvalResult of the base model;  eval/final.json: of the fine-tuned one
  eval/comparison.json Comparison.to_dict() (computed from the two results when absent)
  eval/forgetting.json ForgettingResult as a dict
Anything missing is left out of the report with a note saying so. All text from data is HTML-escaped.

Two losses appear and are labelled as such: the metrics table's loss is token-weighted over every answer
token (what perplexity is made of); the comparison's is the mean of each example's mean loss, the per-example
score the paired bootstrap resamples. Flipped examples show regressions first, then improvements.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

from tunelab.errors import DataError
from tunelab.eval.card_text import setup_line
from tunelab.eval.perplexity import forgetting_verdict, perplexity_text
from tunelab.eval.runner import EVAL_DIR, EvalResult

MAX_FLIPPED_SHOWN = 8  # of each direction
PREFERENCE_RESULTS = ("preference_baseline.json", "preference_final.json")  # tunelab.eval.preference writes them
LOSS_NOTE = ("Loss and perplexity in this table are token-weighted over all answer tokens; the comparison below "
             "averages each example's own mean loss (what the paired bootstrap resamples), so the two differ a little.")  # fmt: skip


@dataclass
class ReportData:
    title: str
    loss_log: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> "metric/key" -> aggregate
    comparison: dict[str, Any] | None = None  # Comparison.to_dict()
    forgetting: dict[str, Any] | None = None  # asdict(ForgettingResult)
    field_accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # metric -> model -> field
    data_card: str | None = None  # data_card.md (Markdown)
    manifest: Any = None
    config: str | None = None  # the resolved config YAML
    notes: list[str] = field(default_factory=list)
    setup: str | None = None  # the distributed setup that ran (environment.json), one line


# --------------------------------------------------------------------------- collecting


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON ({e.msg})", where=str(path), line=lineno) from None
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def result_summary(result: EvalResult) -> tuple[dict[str, float], list[str]]:
    """Aggregate scores as "metric/key" plus notes on what was unparseable, failed or truncated."""
    scores: dict[str, float] = {}
    notes: list[str] = []
    for name, m in result.metrics.items():
        base = name.rpartition("/")[2]  # a task's metric is named "<task>/<metric>"
        scores |= {(name if k == base else f"{name}/{k}"): v for k, v in m.scores.items()}
        for count in ("unparseable", "failed", "invalid", "truncated", "empty"):
            if m.details.get(count):
                notes.append(f"{result.model}: {name}: {m.details[count]} of {len(result.examples)} {count}")
    p = result.prompts
    if p.get("truncated"):
        notes.append(f"{result.model}: {p['truncated']} of {len(result.examples)} prompts were longer than "
                     f"{p['max_tokens']} tokens (data.max_length); generation kept their end")  # fmt: skip
    if p.get("dropped"):
        notes.append(f"{result.model}: {len(p['dropped'])} prompts longer than {p['max_tokens']} tokens were left "
                     f"out (data.truncation: drop), first {p['dropped'][0]}")  # fmt: skip
    return scores, notes


def add_result(data: ReportData, result: EvalResult) -> None:
    """One model's aggregate scores, notes and per-field JSON accuracy into `data`."""
    scores, notes = result_summary(result)
    data.results.setdefault(result.model, {}).update(scores)  # a run's preference results join its others
    data.notes += notes
    for name, m in result.metrics.items():
        if isinstance(m.details.get("per_field_accuracy"), dict):
            data.field_accuracy.setdefault(name, {})[result.model] = m.details["per_field_accuracy"]


def collect_run(run_dir: str | Path) -> ReportData:
    from tunelab.eval.compare import compare_results

    run = Path(run_dir)
    if not run.is_dir():
        raise DataError("run directory not found", where=str(run))
    data = ReportData(title=f"tunelab report: {run.name}")
    if (log := run / "metrics.jsonl").is_file():
        data.loss_log = read_metrics_log(log)
    if (cfg := run / "config.yaml").is_file():
        data.config = cfg.read_text(encoding="utf-8")
    if (env := run / "environment.json").is_file():
        setup = json.loads(env.read_text(encoding="utf-8")).get("distributed")
        data.setup = setup_line(setup) if setup else None
    if (card := run / "data_card.md").is_file():
        data.data_card = card.read_text(encoding="utf-8")
    for name in ("data_manifest.json", "manifest.json"):
        if (man := run / name).is_file():
            data.manifest = json.loads(man.read_text(encoding="utf-8"))
            break
    ev = run / EVAL_DIR
    loaded = {k: EvalResult.load(ev / f"{k}.json") for k in ("baseline", "final") if (ev / f"{k}.json").is_file()}
    for res in loaded.values():
        add_result(data, res)
    for name in PREFERENCE_RESULTS:  # held-out preference accuracy of a dpo/simpo/orpo run (eval.preference)
        if (ev / name).is_file():
            add_result(data, EvalResult.load(ev / name))
    if (cmp := ev / "comparison.json").is_file():
        data.comparison = json.loads(cmp.read_text(encoding="utf-8"))
    elif len(loaded) == 2:
        data.comparison = compare_results(loaded["baseline"], loaded["final"]).to_dict()
    if (fg := ev / "forgetting.json").is_file():
        data.forgetting = json.loads(fg.read_text(encoding="utf-8"))
    for what, present in (("training log (metrics.jsonl)", data.loss_log), ("eval results (eval/)", loaded),
                          ("forgetting check", data.forgetting)):  # fmt: skip
        if not present:
            data.notes.append(f"no {what} in {run}")
    return data


# --------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_losses(log: list[dict[str, Any]]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: [(r["step"], r[k]) for r in log if isinstance(r.get(k), (int, float))] for k in ("loss", "eval_loss")}
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, style in (("loss", "-"), ("eval_loss", "o-")):
        if series[key]:
            ax.plot(*zip(*series[key]), style, label=key.replace("_", " "))
    ax.set(xlabel="step", ylabel="loss", title="Training and eval loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_metric_bars(comparison: dict[str, Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in comparison["rows"] if not math.isnan(r["value_a"]) and not math.isnan(r["value_b"])][:12]
    if not rows:
        return None
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        values = [r["value_a"], r["value_b"]]
        err = [[max(v - ci[0], 0) for v, ci in zip(values, (r["ci_a"], r["ci_b"]))],
               [max(ci[1] - v, 0) for v, ci in zip(values, (r["ci_a"], r["ci_b"]))]]  # fmt: skip
        ax.bar([0, 1], values, yerr=err, capsize=6, color=["#9aa5b1", "#2f6fde"])
        ax.set_xticks([0, 1], [comparison["name_a"], comparison["name_b"]], fontsize=8)
        mark = {"better": " (better)", "worse": " (worse)"}.get(r.get("verdict", ""), "")
        ax.set_title(r.get("label", r["key"]) + mark, fontsize=9, color="#c0392b" if mark == " (worse)" else "black")
    for ax in list(axes.flat)[len(rows) :]:
        ax.axis("off")
    fig.suptitle("Metrics with 95% bootstrap CI", fontsize=10, y=1.03)
    return _png(fig)


def plot_forgetting(fg: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    applicable = fg.get("applicable", True)
    after = "#c0392b" if fg["regressed"] else "#27ae60" if applicable else "#9aa5b1"
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(["before", "after"], [fg["before"], fg["after"]], color=["#9aa5b1", after])
    title = f"General-text perplexity ({fg.get('source', '')})"
    if applicable:
        ax.axhline(fg["before"] * (1 + fg["threshold"]), color="#c0392b", ls="--", lw=1, label="regression threshold")
        ax.legend(fontsize=8)
    else:
        title += "\nnot applicable: the base never learned general text"
    ax.set(ylabel="perplexity", title=title)
    return _png(fig)


# --------------------------------------------------------------------------- markdown


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def shown(text: Any) -> str:
    """Model output on one line: control characters (a tiny model emits NULs), newlines and line/paragraph
    separators as escapes; every other character (spaces of any script, emoji, joiners) as it is."""
    hidden = ("Cc", "Zl", "Zp")
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c) in hidden else c for c in str(text))


def _code(text: Any) -> str:
    """An inline code span that survives backticks in the text: its fence is longer than any run inside."""
    body = shown(text)
    fence = "`" * (max((len(r) for r in re.findall("`+", body)), default=0) + 1)
    return f"{fence} {body} {fence}" if len(fence) > 1 else f"`{body}`"


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def agg_label(key: str) -> str:
    """A metrics-table key, with the loss kind said (see the module docstring)."""
    return f"{key} (token-weighted)" if key.rpartition("/")[2] in ("loss", "perplexity") else key


def row_label(row: dict[str, Any]) -> str:
    """A comparison row's score name, with the loss kind said."""
    label = row.get("label", row["key"])
    return f"{label} (mean over examples)" if row["key"] == "loss" else label


def has_loss(d: ReportData) -> bool:
    return any(agg_label(k) != k for r in d.results.values() for k in r)


def field_tables(d: ReportData) -> list[tuple[str, list[str], list[tuple[str, list[float | None]]]]]:
    """(metric, models, [(field, accuracy per model)]) for every metric with per-field accuracy."""
    out = []
    for metric, by_model in d.field_accuracy.items():
        models = list(by_model)
        names = sorted({f for acc in by_model.values() for f in acc})
        out.append((metric, models, [(f, [by_model[m].get(f) for m in models]) for f in names]))
    return out


def flips_shown(c: dict[str, Any]) -> list[dict[str, Any]]:
    """Regressions first, then improvements: up to MAX_FLIPPED_SHOWN examples of each, the compared scores taken
    in turn. An example that flipped on several scores is shown once, its heading naming the others ("also")."""
    out: list[dict[str, Any]] = []
    for direction in ("regressed", "improved"):
        by_key: dict[str, list[dict[str, Any]]] = {}
        for f in c["flipped"]:
            if f["direction"] == direction:
                by_key.setdefault(f["key"], []).append(f)
        by_example: dict[int, dict[str, Any]] = {}
        for f in (f for group in zip_longest(*by_key.values()) for f in group if f is not None):
            if f["index"] in by_example:
                by_example[f["index"]]["also"].append(f["key"])
            elif len(by_example) < MAX_FLIPPED_SHOWN:
                by_example[f["index"]] = {**f, "also": []}
        out += by_example.values()
    return out


def flip_title(f: dict[str, Any]) -> str:
    also = f" (also {', '.join(f['also'])})" if f.get("also") else ""
    return f"{f['direction']} on {f['key']}{also}: example {f['index']}"


def flips_summary(c: dict[str, Any]) -> str:
    regressed = sum(len(r["regressed"]) for r in c["rows"])
    improved = sum(len(r["improved"]) for r in c["rows"])
    counts = (f"{regressed} (example, score) pairs got worse and {improved} got better" if regressed else
              f"No example got worse on any score; {improved} (example, score) pairs got better")  # fmt: skip
    return (f"{counts}. Regressions first, then improvements, up to {MAX_FLIPPED_SHOWN} examples of each (more in "
            "eval/comparison.json).")  # fmt: skip


def forgetting_status(fg: dict[str, Any]) -> str:
    """The check's verdict with, when it has none, the reason."""
    verdict = forgetting_verdict(fg)
    return f"{verdict}: {fg['reason']}" if verdict == "not applicable" and fg.get("reason") else verdict


def demote(markdown: str) -> str:
    """A Markdown document as a section: every heading one level down (fenced code left alone)."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if line.startswith("#") and not fenced else line)
    return "\n".join(out)


def _forgetting_md(fg: dict[str, Any] | None) -> list[str]:
    if not fg:
        return []
    status = forgetting_status(fg)
    flag = "**REGRESSION**" if status == "REGRESSION" else status
    return ["## Forgetting check", "", f"General-text perplexity {perplexity_text(fg['before'])} -> "
            f"{perplexity_text(fg['after'])} "
            f"({fg['relative_change']:+.1%}, threshold +{fg['threshold']:.0%}): {flag}", ""]  # fmt: skip


def _metrics_md(d: ReportData) -> list[str]:
    models = list(d.results)
    keys = sorted({k for r in d.results.values() for k in r})
    out = ["## Metrics", "", "| metric | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    out += [f"| {agg_label(k)} | " + " | ".join(_f(d.results[m].get(k)) for m in models) + " |" for k in keys]
    out += ["", LOSS_NOTE, ""] if has_loss(d) else [""]
    for metric, fmodels, rows in field_tables(d):
        out += [f"## Per-field accuracy ({metric})", "", "| field | " + " | ".join(fmodels) + " |",
                "|---" * (len(fmodels) + 1) + "|", *[f"| {f} | " + " | ".join(_f(v) for v in vals) + " |"
                                                      for f, vals in rows], ""]  # fmt: skip
    return out


def _comparison_md(c: dict[str, Any]) -> list[str]:
    out = [f"## Comparison: {c['name_a']} vs {c['name_b']}", "",
           "Means of per-example scores; diff = B - A with a paired bootstrap 95% CI.", "",
           f"| score | {c['name_a']} | {c['name_b']} | diff | 95% CI | verdict | improved | regressed |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in c["rows"]:
        out.append(f"| {row_label(r)} | {_f(r['value_a'])} | {_f(r['value_b'])} | {_f(r['diff'])} | "
                   f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}] | {r['verdict']} | {len(r['improved'])} | "
                   f"{len(r['regressed'])} |")  # fmt: skip
    return [*out, ""]


def _flipped_md(c: dict[str, Any]) -> list[str]:
    if not c["flipped"]:
        return []
    out = ["## Flipped examples", "", flips_summary(c), ""]
    for f in flips_shown(c):
        out += [f"### {flip_title(f)} ({f['source']})", "",
                "Input:", "```", _prompt_text(f["prompt"]), "```", f"Reference: {_code(f['reference'])}", "",
                f"- {c['name_a']} ({_f(f['score_a'])}): {_code(f['output_a'])}",
                f"- {c['name_b']} ({_f(f['score_b'])}): {_code(f['output_b'])}", ""]  # fmt: skip
    return out


def render_markdown(d: ReportData) -> str:
    out = [f"# {d.title}", "", "Plots are in report.html.", ""]
    if d.results:
        out += _metrics_md(d)
    if d.comparison:
        out += _comparison_md(d.comparison)
    out += _forgetting_md(d.forgetting)
    if d.comparison:
        out += _flipped_md(d.comparison)
    if d.notes:
        out += ["## Notes", "", *[f"- {n}" for n in d.notes], ""]
    if d.data_card:
        out += [demote(d.data_card), ""]
    if d.setup:
        out += ["## Training setup", "", d.setup, ""]
    if d.manifest is not None:
        out += ["## Data manifest", "", "```json", json.dumps(d.manifest, indent=1), "```", ""]
    if d.config:
        out += ["## Config", "", "```yaml", d.config.rstrip(), "```", ""]
    return "\n".join(out)


def write_report(data: ReportData, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html into `out_dir`; returns both paths."""
    from tunelab.eval.report_html import render_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(data), encoding="utf-8")
    page.write_text(render_html(data), encoding="utf-8")
    return md, page


def report_run(run_dir: str | Path) -> tuple[Path, Path]:
    """(Re)generate a run directory's report from what the run saved."""
    return write_report(collect_run(run_dir), run_dir)


def report_data_dict(data: ReportData) -> dict[str, Any]:
    return asdict(data)
