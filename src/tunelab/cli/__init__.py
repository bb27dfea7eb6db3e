"""The `tunelab` command: thin verbs over tunelab.api (and the data toolkit). User errors print one message, no
traceback (exit 2). Each module of this package holds the verbs of one area; this one mounts them."""

from __future__ import annotations

import sys

import typer

from tunelab.cli import data, evaluate, export, feedback, project, serve, studio, train, tune
from tunelab.console import quiet_libraries
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
    quiet_libraries()


for verbs in (
    project.app,
    train.app,
    evaluate.app,
    feedback.app,
):  # top-level verbs: validate, train, eval, compare, ...
    app.registered_commands += verbs.registered_commands
app.add_typer(data.data_app, name="data", help="Inspect, check, clean, split and augment data.")
app.add_typer(feedback.feedback_app, name="feedback", help="Review production feedback and export it as data.")
app.command("serve")(serve.serve_cmd)
app.command("serve-key")(serve.serve_key_cmd)
app.command("export", cls=export.ExportCommand)(export.export_cmd)
app.command("verify")(export.verify_cmd)
app.command("studio")(studio.studio_cmd)
app.add_typer(studio.jobs_app, name="jobs", help="The studio's job queue: submit, list, show, cancel.")
app.command("tune")(tune.tune_command)
app.command("plan")(tune.plan_command)


def main(argv: list[str] | None = None) -> None:
    """The console script; `argv` (default: sys.argv[1:]) lets tests run the real CLI in-process."""
    try:
        app(args=argv, prog_name="tunelab")
    except TunelabError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
