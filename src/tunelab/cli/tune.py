"""`tunelab tune` and `tunelab plan`: thin verbs over tunelab.tune (the search sits above tunelab.api: it drives
api.train) and tunelab.api.plan (tunelab.planner). Both import them (torch, transformers) in their bodies, so that
`tunelab --help` starts fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def tune_command(
    config: Annotated[Path, typer.Argument(help="Run config YAML with a tune: section (see examples/tune.yaml).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. tune.trials=8.")] = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker",
            help="Only run trials of the study (another process writes the results): a "
            "second machine joining through a shared tune.storage.",
        ),  # fmt: skip
    ] = False,
) -> None:
    """Search hyperparameters: `tunelab tune examples/tune.yaml`. Running it again resumes the study."""
    from tunelab import api
    from tunelab.api import TrainingInterrupted
    from tunelab.tune import tune as run_tune

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


def plan_command(
    config: Annotated[Path, typer.Argument(help="Run config YAML.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. train.batch_size=4.")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="A device of the table (h100-80gb, a100-40gb, l4, t4, ...; cpu).")
    ] = None,
    price_per_hour: Annotated[
        float | None, typer.Option("--price-per-hour", help="Price per hour, for the cost.")
    ] = None,
    calibrate: Annotated[
        bool, typer.Option("--calibrate", help="Measure this machine's throughput with a few real steps.")
    ] = False,
) -> None:
    """Estimate peak memory, time and cost before training: `tunelab plan examples/sft-lora.yaml --device l4`."""
    from tunelab import api
    from tunelab.planner import render

    cfg = api.load_config(config, overrides or [])
    est = api.plan(cfg, device, price_per_hour, calibrate)
    for line in render(est):
        typer.echo(line)
    typer.echo(est.summary())
