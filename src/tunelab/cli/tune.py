"""`tunelab tune`: a thin verb over tunelab.tune (the search sits above tunelab.api: it drives api.train)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab import api
from tunelab.api import TrainingInterrupted
from tunelab.tune import tune as run_tune


def tune_command(
    config: Annotated[Path, typer.Argument(help="Run config YAML with a tune: section (see examples/tune.yaml).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. tune.trials=8.")] = None,
    worker: Annotated[
        bool,
        typer.Option("--worker", help="Only run trials of the study (another process writes the results): a "
                     "second machine joining through a shared tune.storage."),  # fmt: skip
    ] = False,
) -> None:
    """Search hyperparameters: `tunelab tune examples/tune.yaml`. Running it again resumes the study."""
    cfg = api.load_config(config, overrides or [])
    try:
        result = run_tune(cfg, config, worker=worker, log=typer.echo)
    except TrainingInterrupted as e:
        again = f"tunelab tune {config} {' '.join(overrides or [])}".rstrip()
        typer.echo(f"{e}\nthe study is saved; resume with: {again}", err=True)
        raise typer.Exit(128 + e.signum) from None
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items() if n)
    typer.echo(f"study {result.study}: {counts or 'no trials'} ({result.root})")
    if worker:
        return
    if result.best:
        shown = " ".join(f"{k}={v}" for k, v in result.best["params"].items())
        typer.echo(f"best: trial {result.best['trial']} {result.best['values']}  {shown}")
        typer.echo(f"best config: {result.best_config}  (tunelab train {result.best_config})")
    else:
        typer.echo("no trial completed; see trials.md for why")
    for line in result.verdict:
        typer.echo(line)
    typer.echo(f"trials:  {result.root / 'trials.md'}\nreport:  {result.report}")
