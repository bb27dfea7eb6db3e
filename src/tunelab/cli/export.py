"""Export verbs: `export RUN --format hf|merged|gguf` and `verify EXPORT --against RUN` (over tunelab.api).

Parameters are declared with `Annotated`, so their defaults are plain values and a command stays callable as a
Python function (a `typer.Option(...)` default would reach the body as an OptionInfo object).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tunelab import api
from tunelab.export.verify import VerifyError


def export_cmd(
    source: Annotated[Path, typer.Argument(help="A run directory (or a model folder, with --out).")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="hf (as trained), merged (LoRA folded in), gguf.")
    ] = "merged",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Export folder (default RUN/exports/FORMAT).")] = None,
    gguf_type: Annotated[str, typer.Option("--gguf-type", help="GGUF weight type: f16 or q8_0.")] = "f16",
    check: Annotated[bool, typer.Option(help="Verify the export against the source right away.")] = True,
) -> None:
    """Export a trained run. Example: tunelab export runs/my-run --format gguf --gguf-type q8_0"""
    dest = api.export(source, format, out, qtype=gguf_type)
    typer.echo(f"exported {source} as {format} to {dest}")
    if check:
        verify_and_print(dest, source)


def verify_cmd(
    export_dir: Annotated[Path, typer.Argument(help="An export folder written by `tunelab export`.")],
    against: Annotated[Path, typer.Option("--against", help="The run (or model folder) it was exported from.")],
    prompts: Annotated[
        Path | None, typer.Option(help="Text file of golden prompts, one per line (default: built-in).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens compared per prompt.")] = 32,
) -> None:
    """Prove an export matches its run (logit differences, greedy agreement); exit 2 beyond tolerance."""
    texts = [ln for ln in prompts.read_text().splitlines() if ln.strip()] if prompts else None
    verify_and_print(export_dir, against, texts, max_new_tokens)


def verify_and_print(export_dir: Path, against: Path, texts: list[str] | None = None, max_new_tokens: int = 32) -> None:
    """Run `verify` and print its report; a failed check prints the report, then raises VerifyError (exit 2)."""
    try:
        report = api.verify(export_dir, against, texts, max_new_tokens)
    except VerifyError as e:
        typer.echo(json.dumps(e.report.as_dict(), indent=2))
        raise
    typer.echo(json.dumps(report.as_dict(), indent=2))
    typer.secho("export matches its run", fg="green")
