"""Evaluation verbs: `eval`, `compare`, `report` (thin over tunelab.api; the work is tunelab.eval.targets).

Settings come from --config (a run config YAML; a run directory's own config.yaml by default) plus KEY=VALUE
overrides; the eval data is --data (repeatable) or the config's data.eval. Each verb imports tunelab.api and
tunelab.eval (torch, transformers) in its body, so that `tunelab --help` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer()

DataOpt = Annotated[list[str] | None, typer.Option("--data", "-d", help="Eval dataset file or folder (repeatable).")]
ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="Run config YAML with the eval settings.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Config override KEY=VALUE (repeatable).")]


def _print_scores(result: Any) -> None:
    from tunelab.eval.report import agg_label

    for name, m in result.metrics.items():
        scores = ", ".join(f"{agg_label(k)}={v:.4g}" for k, v in m.scores.items())
        counts = {k: m.details[k] for k in ("unparseable", "failed", "invalid", "truncated") if m.details.get(k)}
        typer.echo(f"{name}: {scores}" + (f"  ({counts})" if counts else ""))
    p = getattr(result, "prompts", {})
    if p.get("truncated") or p.get("dropped"):
        what = f"{p['truncated']} kept their end" if p.get("truncated") else f"{len(p['dropped'])} left out"
        typer.echo(f"prompts longer than {p['max_tokens']} tokens (data.max_length): {what}")


@app.command("eval")
def eval_cmd(
    target: Annotated[str, typer.Argument(help="Run directory, model folder or preset name.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Result JSON; default RUN/eval/final.json or ./eval-NAME.json.")
    ] = None,
) -> None:
    """Generate on the eval data and compute the configured metrics.

    Example: tunelab eval runs/my-run --data test.jsonl -s 'eval.metrics=[exact_match,f1,loss]'
    """
    from tunelab import api

    result, path = api.evaluate(target, data, config, overrides or [], out)
    _print_scores(result)
    typer.echo(f"saved {path}")


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="Baseline: run dir, model folder, preset, or an eval result .json.")],
    b: Annotated[str, typer.Argument(help="Candidate: same kinds as A.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    out: Annotated[Path, typer.Option(help="Folder for results, comparison.json and the report.")] = Path("compare"),
) -> None:
    """Evaluate A and B on the same data with the same decoding; diff, bootstrap CI and flipped examples.

    Example: tunelab compare tiny runs/my-run --data test.jsonl --out cmp/
    """
    from tunelab import api
    from tunelab.eval.perplexity import forgetting_line
    from tunelab.eval.report import row_label

    cfg = api.resolve_config(b, config, overrides or [])
    res = api.compare(a, b, data, config, overrides or [], out)
    for row in res.comparison["rows"]:
        typer.echo(f"{row_label(row)}: {row['value_a']:.4g} -> {row['value_b']:.4g} (diff {row['diff']:+.4g}, "
                   f"95% CI [{row['ci_low']:.4g}, {row['ci_high']:.4g}]) {row['verdict']}")  # fmt: skip
    if res.forgetting:
        typer.echo(f"forgetting: {forgetting_line(res.forgetting)}")
    typer.echo(f"report: {res.report[1]}")
    if res.forgetting and res.forgetting["regressed"] and cfg.eval.fail_on_regression:
        raise typer.Exit(1)


@app.command()
def report(run: Annotated[str, typer.Argument(help="Run directory (or a compare --out folder).")]) -> None:
    """Regenerate report.md and report.html of a run from what it saved.

    Example: tunelab report runs/my-run
    """
    from tunelab import api

    md, page = api.report(run)
    typer.echo(f"wrote {md} and {page}")
