"""The `tunelab` command: thin verbs over the library. User errors print one message, no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from tunelab.errors import TunelabError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Fine-tune LLMs end to end.",
)


@app.callback()
def _before_any_command() -> None:
    """No library progress bars or known-harmless warnings (tunelab.console says which)."""
    from tunelab.console import quiet_libraries

    quiet_libraries()


ConfigArg = Annotated[str, typer.Argument(help="Run config (YAML).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="Overrides like train.lr=1e-4 data.max_length=512.")]


def _load(config: str, overrides: list[str] | None):  # type: ignore[no-untyped-def]
    from tunelab.api import load_config
    from tunelab.models.load import load_tokenizer

    cfg = load_config(config, overrides or [])
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
    from tunelab.api import validate as run_validate

    cfg, tok = _load(config, overrides)
    report = run_validate(cfg, tok)
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
    from tunelab.api import debug_examples
    from tunelab.api import validate as run_validate
    from tunelab.data.preview import render_masked, token_table

    cfg, tok = _load(config, overrides)
    for where, view, ex in debug_examples(cfg, debug, tok) if debug else []:
        typer.secho(f"=== {where} {view} — {len(ex.input_ids)} tokens, {ex.n_trainable} carry loss", bold=True)
        typer.echo(render_masked(tok, ex))
        if tokens:
            typer.echo("  pos      id token                    label")
            typer.echo("\n".join(token_table(tok, ex)))
    report = run_validate(cfg, tok)
    typer.echo(json.dumps(report, indent=2))


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON schema of the run config."""
    from tunelab.config import config_schema as schema

    typer.echo(json.dumps(schema(), indent=2))


@app.command("docs-config")
def docs_config() -> None:
    """Print the config reference (Markdown) generated from the field descriptions."""
    from tunelab.docs import config_reference

    typer.echo(config_reference(), nl=False)


@app.command()
def quickstart(
    model: Annotated[str, typer.Option(help="A preset, a local model folder or a hub id.")] = "tiny-1m",
    out: Annotated[Path, typer.Option(help="Folder for the data, the config and the run.")] = Path("quickstart"),
    epochs: Annotated[float, typer.Option(help="Training epochs (fewer is faster and less accurate).")] = 5.0,
) -> None:
    """The whole lifecycle offline in minutes: data -> checks -> baseline -> fine-tune -> eval -> report.

    Example: tunelab quickstart --out qs/
    """
    from tunelab.quickstart import format_summary, run

    typer.echo(format_summary(run(model, out, epochs, log=typer.echo)))


@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to copy the example configs.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite files that exist.")] = False,
) -> None:
    """Copy the example configs (LoRA SFT, full fine-tune, quickstart, accelerate launchers) into FOLDER."""
    from tunelab.quickstart import init_examples

    for path in init_examples(folder, force):
        typer.echo(f"wrote {path}")
    typer.echo(f"next: tunelab validate {folder / 'sft-lora.yaml'} && tunelab train {folder / 'sft-lora.yaml'}")


def _register() -> None:
    """Sub-apps live beside the code they drive; the CLI only mounts them."""
    from tunelab.eval.cli import app as eval_app
    from tunelab.export.cli import export_cmd, verify_cmd
    from tunelab.quality.cli import data_app
    from tunelab.serve.cli import serve_cmd, serve_key_cmd
    from tunelab.train.cli import app as train_app

    app.add_typer(data_app, name="data", help="Inspect, check, clean, split and augment data.")
    app.registered_commands += train_app.registered_commands  # train, generate, chat
    app.registered_commands += eval_app.registered_commands  # eval, compare, report as top-level verbs
    app.command("serve")(serve_cmd)
    app.command("serve-key")(serve_key_cmd)
    app.command("export")(export_cmd)
    app.command("verify")(verify_cmd)


_register()


def main(argv: list[str] | None = None) -> None:
    """The console script; `argv` (default: sys.argv[1:]) lets tests run the real CLI in-process."""
    try:
        app(args=argv, prog_name="tunelab")
    except TunelabError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":  # `accelerate launch -m tunelab.cli train ...`
    main()
