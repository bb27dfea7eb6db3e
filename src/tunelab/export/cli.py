"""Typer commands `export RUN --format hf|merged|gguf [--push REPO]` and `verify EXPORT --against RUN` for
tunelab.cli."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tunelab.export.exporters import export
from tunelab.export.gguf import GGUF_TYPES
from tunelab.export.llamacpp import LLAMA_CPP_TYPES
from tunelab.export.verify import VerifyError, verify


def export_cmd(
    source: Path = typer.Argument(..., help="A run directory (or a model folder, with --out)."),
    format: str = typer.Option("merged", "--format", "-f", help="hf (as trained), merged (LoRA folded in), gguf."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Export folder (default RUN/exports/FORMAT)."),
    gguf_type: str = typer.Option(
        "f16",
        "--gguf-type",
        help=f"GGUF weights: {', '.join(GGUF_TYPES)}; with llama.cpp {', '.join(LLAMA_CPP_TYPES)}.",
    ),
    gguf_converter: str = typer.Option(
        "tunelab", "--gguf-converter", help="tunelab (built in) or llama.cpp (its convert_hf_to_gguf.py)."
    ),
    llama_cpp: Path | None = typer.Option(
        None,
        "--llama-cpp",
        help="llama.cpp folder with llama-quantize / convert_hf_to_gguf.py (default: $TUNELAB_LLAMA_CPP, then PATH).",
    ),  # fmt: skip
    modelfile: bool = typer.Option(True, help="Write an Ollama Modelfile next to a GGUF."),
    check: bool = typer.Option(True, help="Verify the export against the source right away."),
    push: str | None = typer.Option(
        None, "--push", help="Upload the export to this Hub repo (after it passes verification, unless --no-check)."
    ),
    private: bool = typer.Option(False, help="With --push: create the repo as private."),
) -> None:
    """Export a trained run. Example: tunelab export runs/my-run --format gguf --gguf-type q4_0 --push me/my-model"""
    dest = export(source, format, out, qtype=gguf_type, converter=gguf_converter, llama_cpp=llama_cpp,
                  modelfile=modelfile)  # fmt: skip
    typer.echo(f"exported {source} as {format} to {dest}")
    if check:
        verify_cmd(dest, source, prompts=None, max_new_tokens=32)  # a direct call: Typer's defaults do not apply
    if push:
        from tunelab.export.push import push as push_folder

        typer.echo(f"pushed to {push}: {push_folder(dest, push, private=private)}")


def verify_cmd(
    export_dir: Path = typer.Argument(..., help="An export folder written by `tunelab export`."),
    against: Path = typer.Option(..., "--against", help="The run (or model folder) it was exported from."),
    prompts: Path | None = typer.Option(None, help="Text file of golden prompts, one per line (default: built-in)."),
    max_new_tokens: int = typer.Option(32, help="Greedy tokens compared per prompt."),
) -> None:
    """Prove an export matches its run (logit differences, greedy agreement); exit 2 beyond tolerance.
    The result is saved as EXPORT/verify.json and shown in the export's model card."""
    texts = [ln for ln in prompts.read_text().splitlines() if ln.strip()] if prompts else None
    try:
        report = verify(export_dir, against, texts, max_new_tokens, record=True)
    except VerifyError as e:
        typer.echo(json.dumps(e.report.as_dict(), indent=2))
        raise
    typer.echo(json.dumps(report.as_dict(), indent=2))
    typer.secho("export matches its run", fg="green")
