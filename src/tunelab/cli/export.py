"""Export verbs: `export RUN --format hf|merged|gguf [--push REPO]` and `verify EXPORT --against RUN` (over
tunelab.api).

Parameters are declared with `Annotated`, so their defaults are plain values and a command stays callable as a
Python function (a `typer.Option(...)` default would reach the body as an OptionInfo object). tunelab.api (torch,
transformers) is imported in the verbs' bodies, so that `tunelab --help` starts fast; the GGUF types the installed
gguf package writes (numpy, gguf) are looked up when `export --help` is shown (ExportCommand).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperOption

from tunelab.export.llamacpp import LLAMA_CPP_TYPES

GGUF_TYPE_HELP = "GGUF weights: {}; with llama.cpp {}."


class ExportCommand(TyperCommand):
    """`export`, whose --gguf-type help names the GGUF types tunelab writes: finding them out imports numpy and gguf
    (a quarter of a second), so it is done when the help is shown rather than at every `tunelab` start."""

    def format_help(self, ctx: Any, formatter: Any) -> None:  # Any: typer's own click types are private
        from tunelab.export.gguf_types import GGUF_TYPES

        for p in self.params:
            if isinstance(p, TyperOption) and p.name == "gguf_type":
                p.help = GGUF_TYPE_HELP.format(", ".join(GGUF_TYPES), ", ".join(LLAMA_CPP_TYPES))
        super().format_help(ctx, formatter)


def export_cmd(
    source: Annotated[Path, typer.Argument(help="A run directory (or a model folder, with --out).")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="hf (as trained), merged (LoRA folded in), gguf.")
    ] = "merged",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Export folder (default RUN/exports/FORMAT).")] = None,
    gguf_type: Annotated[
        str,
        typer.Option("--gguf-type", help=GGUF_TYPE_HELP.format("listed by `tunelab export --help`", "K-quants")),
    ] = "f16",
    gguf_converter: Annotated[
        str, typer.Option("--gguf-converter", help="tunelab (built in) or llama.cpp (its convert_hf_to_gguf.py).")
    ] = "tunelab",
    llama_cpp: Annotated[
        Path | None,
        typer.Option(
            "--llama-cpp",
            help="llama.cpp folder with llama-quantize / convert_hf_to_gguf.py (default: $TUNELAB_LLAMA_CPP, then PATH).",
        ),
    ] = None,
    modelfile: Annotated[bool, typer.Option(help="Write an Ollama Modelfile next to a GGUF.")] = True,
    check: Annotated[bool, typer.Option(help="Verify the export against the source right away.")] = True,
    push: Annotated[
        str | None,
        typer.Option(
            "--push", help="Upload the export to this Hub repo (after it passes verification, unless --no-check)."
        ),
    ] = None,
    private: Annotated[bool, typer.Option(help="With --push: create the repo as private.")] = False,
) -> None:
    """Export a trained run. Example: tunelab export runs/my-run --format gguf --gguf-type q4_0 --push me/my-model"""
    from tunelab import api
    from tunelab.export.push import push as push_folder

    dest = api.export(source, format, out, qtype=gguf_type, converter=gguf_converter, llama_cpp=llama_cpp,
                      modelfile=modelfile)  # fmt: skip
    typer.echo(f"exported {source} as {format} to {dest}")
    if check:
        verify_and_print(dest, source)
    if push:
        typer.echo(f"pushed to {push}: {push_folder(dest, push, private=private)}")


def verify_cmd(
    export_dir: Annotated[Path, typer.Argument(help="An export folder written by `tunelab export`.")],
    against: Annotated[Path, typer.Option("--against", help="The run (or model folder) it was exported from.")],
    prompts: Annotated[
        Path | None, typer.Option(help="Text file of golden prompts, one per line (default: built-in).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens compared per prompt.")] = 32,
) -> None:
    """Prove an export matches its run (logit differences, greedy agreement); exit 2 beyond tolerance.
    The result is saved as EXPORT/verify.json and shown in the export's model card."""
    texts = [ln for ln in prompts.read_text().splitlines() if ln.strip()] if prompts else None
    verify_and_print(export_dir, against, texts, max_new_tokens)


def verify_and_print(export_dir: Path, against: Path, texts: list[str] | None = None, max_new_tokens: int = 32) -> None:
    """Run `verify` and print its report; a failed check prints the report, then raises VerifyError (exit 2)."""
    from tunelab import api
    from tunelab.export.verify import VerifyError

    try:
        report = api.verify(export_dir, against, texts, max_new_tokens)
    except VerifyError as e:
        typer.echo(json.dumps(e.report.as_dict(), indent=2))
        raise
    typer.echo(json.dumps(report.as_dict(), indent=2))
    typer.secho("export matches its run", fg="green")
