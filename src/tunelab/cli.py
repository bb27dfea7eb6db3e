"""The `tunelab` command: thin verbs over `tunelab.api`. User errors print one message, no traceback."""

from __future__ import annotations

import sys

import typer

from tunelab.errors import TunelabError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="Fine-tune LLMs end to end."
)


def main() -> None:
    try:
        app()
    except TunelabError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
