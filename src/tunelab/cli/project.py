"""Project verbs: validate and prepare a config's data, the config schema and reference, the quickstart, init.

tunelab.api, the tokenizer and the data preview (torch, transformers) are imported in the verbs that use them,
so that `tunelab --help`, `config-schema` and `docs-config` start fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tunelab.cli.docs import config_reference, with_methods_table
from tunelab.config import config_schema as schema
from tunelab.quickstart import format_summary, init_examples
from tunelab.quickstart import run as run_quickstart

app = typer.Typer()

ConfigArg = Annotated[str, typer.Argument(help="Run config (YAML).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Overrides like train.lr=1e-4 data.max_length=512.")]


def _load(config: str, overrides: list[str] | None) -> tuple[Any, Any]:
    from tunelab import api
    from tunelab.models.load import load_tokenizer

    cfg = api.load_config(config, overrides or [])
    return cfg, load_tokenizer(cfg.model)


@app.command()
def validate(
    config: ConfigArg,
    overrides: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load CONFIG and build the whole data pipeline without training; report counts and problems.

    Example: tunelab validate examples/sft-lora.yaml data.max_length=512
    """
    from tunelab import api

    cfg, tok = _load(config, overrides)
    report = api.validate(cfg, tok)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"config OK: model={cfg.model.name_or_path} tuning={cfg.tuning.mode} method={cfg.method.name}")
    for d in report["datasets"]:
        typer.echo(f"- {d['path']} ({d['format']}): {d['records']} records")
        details = {k: v for k, v in d.items() if k not in ("path", "format", "records")}
        typer.echo("    " + ", ".join(f"{k}={v}" for k, v in details.items()))
    if report["kind"] != "preference":
        typer.echo(f"train examples: {report['train_examples']}, eval examples: {report['eval_examples']}"
                   + (" (from cache)" if report["cached"] else ""))  # fmt: skip
    if "labels" in report:
        names = report["label_names"]
        typer.echo(f"labels: {report['labels']} ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
    if found := report.get("data_check"):
        typer.echo(f"data check: {found['errors']} error(s), {found['warnings']} warning(s)")
        for p in found["problems"]:
            typer.echo(f"  [{p['severity']}] {p['code']}: {p['message']}")
        if found["errors"]:
            typer.echo("the data check found errors: training would stop at them (see data.check)")
            raise typer.Exit(1)


@app.command()
def prepare(
    config: ConfigArg,
    overrides: Overrides = None,
    debug: Annotated[
        int, typer.Option("--debug", help="Show the first N examples token by token with their loss mask.")
    ] = 0,
    tokens: Annotated[bool, typer.Option(help="With --debug, also print the per-token table.")] = True,
) -> None:
    """Tokenize the data (and cache it); with --debug N show what carries loss, ⟦like this⟧.

    Example: tunelab prepare examples/sft-lora.yaml --debug 2
    """
    from tunelab import api
    from tunelab.data.preview import render_masked, token_table

    cfg, tok = _load(config, overrides)
    for where, view, ex in api.debug_examples(cfg, debug, tok) if debug else []:
        typer.secho(f"=== {where} {view} — {len(ex.input_ids)} tokens, {ex.n_trainable} carry loss", bold=True)
        typer.echo(render_masked(tok, ex))
        if tokens:
            typer.echo("  pos      id token                    label")
            typer.echo("\n".join(token_table(tok, ex)))
    report = api.validate(cfg, tok)
    typer.echo(json.dumps(report, indent=2))


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON schema of the run config."""
    typer.echo(json.dumps(schema(), indent=2))


@app.command("docs-config")
def docs_config() -> None:
    """Print the config reference (Markdown) generated from the field descriptions."""
    typer.echo(config_reference(), nl=False)


@app.command("docs-methods", hidden=True)
def docs_methods(doc: Annotated[Path, typer.Argument(help="docs/methods.md, rewritten in place.")]) -> None:
    """Rewrite the methods table of docs/methods.md from the method registry (`make docs`)."""
    doc.write_text(with_methods_table(doc.read_text()))


@app.command()
def quickstart(
    model: Annotated[str, typer.Option(help="A preset, a local model folder or a hub id.")] = "tiny-1m",
    out: Annotated[Path, typer.Option(help="Folder for the data, the config and the run.")] = Path("quickstart"),
    epochs: Annotated[float, typer.Option(help="Training epochs (fewer is faster and less accurate).")] = 5.0,
) -> None:
    """The whole lifecycle offline in minutes: data -> checks -> baseline -> fine-tune -> eval -> report.

    Example: tunelab quickstart --out qs/
    """
    typer.echo(format_summary(run_quickstart(model, out, epochs, log=typer.echo)))


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to copy the example configs.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite files that exist.")] = False,
) -> None:
    """Copy the example configs (LoRA SFT, full fine-tune, quickstart, accelerate launchers) into FOLDER."""
    for path in init_examples(folder, force):
        typer.echo(f"wrote {path}")
    typer.echo(f"next: tunelab validate {folder / 'sft-lora.yaml'} && tunelab train {folder / 'sft-lora.yaml'}")
