"""Serving verbs: `serve RUN_OR_MODEL [--adapter NAME=PATH ...]` and `serve-key KEY_ID` (over tunelab.api).

`serve` imports tunelab.api (torch, transformers, fastapi) in its body, so that `tunelab --help` and `serve-key`
start fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from tunelab.errors import TunelabError
from tunelab.serve.config import load_serve_config
from tunelab.serve.security import new_api_key


def _adapters(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TunelabError(f"--adapter {item!r}: expected NAME=PATH (a LoRA folder or a LoRA run directory)")
        out[name] = path
    return out


def serve_cmd(
    target: Annotated[str, typer.Argument(help="A run directory, a model folder, or a preset name (tiny).")],
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", "-a", help="Also serve a LoRA adapter: NAME=PATH (repeatable).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="serve.yaml (keys, limits, guard, logging).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (overrides the config).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (overrides the config).")] = None,
) -> None:
    """Serve a model and its LoRA adapters with an OpenAI-compatible API.

    Example: tunelab serve runs/my-run --adapter support=runs/support-lora --port 8000
    then: OPENAI_BASE_URL=http://127.0.0.1:8000/v1 any OpenAI client, model="my-run" or "support".
    """
    from tunelab import api

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_serve_config(config)
    update = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    api.serve(target, cfg.model_copy(update=update), _adapters(adapter or []))


def serve_key_cmd(
    key_id: Annotated[str, typer.Argument(help="A name for the key (shown in logs and the store).")],
) -> None:
    """Create an API key: prints the key once (give it to the client) and the line for the keys file."""
    key, line = new_api_key(key_id)
    typer.echo(f"key (shown once): {key}")
    typer.echo(f"keys file line:   {line}")
