"""Typer commands `export RUN --format hf|merged|gguf` and `verify EXPORT --against RUN` for tunelab.cli."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tunelab.export.exporters import export
from tunelab.export.verify import VerifyError, verify


def export_cmd(
    source: Path = typer.Argument(..., help="A run directory (or a model folder, with --out)."),
    format: str = typer.Option("merged", "--format", "-f", help="hf (as trained), merged (LoRA folded in), gguf."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Export folder (default RUN/exports/FORMAT)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF weight type: f16 or q8_0."),
    check: bool = typer.Option(True, help="Verify the export against the source right away."),
) -> None:
    """Export a trained run. Example: tunelab export runs/my-run --format gguf --gguf-type q8_0"""
    dest = export(source, format, out, qtype=gguf_type)
    typer.echo(f"exported {source} as {format} to {dest}")
    if check:
        verify_cmd(dest, source)


def verify_cmd(
    export_dir: Path = typer.Argument(..., help="An export folder written by `tunelab export`."),
    against: Path = typer.Option(..., "--against", help="The run (or model folder) it was exported from."),
    prompts: Path | None = typer.Option(None, help="Text file of golden prompts, one per line (default: built-in)."),
    max_new_tokens: int = typer.Option(32, help="Greedy tokens compared per prompt."),
) -> None:
    """Prove an export matches its run (logit differences, greedy agreement); exit 2 beyond tolerance."""
    texts = [ln for ln in prompts.read_text().splitlines() if ln.strip()] if prompts else None
    try:
        report = verify(export_dir, against, texts, max_new_tokens)
    except VerifyError as e:
        typer.echo(json.dumps(e.report.as_dict(), indent=2))
        raise
    typer.echo(json.dumps(report.as_dict(), indent=2))
    typer.secho("export matches its run", fg="green")
