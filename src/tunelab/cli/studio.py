"""`tunelab studio MODEL` (the web UI, the jobs API and the server in one process) and `tunelab jobs ...`
(submit, list, show, cancel: the same queue, from the shell; a running studio trains what is queued).

The studio app, tunelab.api (torch, transformers, fastapi) and the job store (sqlalchemy) are imported in the verbs
that use them, so that `tunelab --help` starts fast and `jobs list|show|cancel` load no model library."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tunelab.cli.serve import _adapters
from tunelab.errors import TunelabError
from tunelab.studio.config import StudioConfig, load_studio_config

if TYPE_CHECKING:
    from tunelab.studio.store import JobStore

jobs_app = typer.Typer(no_args_is_help=True)
StudioYaml = Annotated[Path | None, typer.Option("--config", "-c", help="studio.yaml (server, queue, folders).")]


def studio_cmd(
    model: Annotated[str, typer.Argument(help="The base model to serve and fine-tune: a preset, a folder, a run.")],
    config: StudioYaml = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8000).")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", "-a", help="Also serve a LoRA adapter: NAME=PATH (repeatable).")
    ] = None,
) -> None:
    """The web UI, OpenAI's fine-tuning jobs API and the OpenAI-compatible server, over one job queue.

    Example: tunelab studio tiny   (then open http://127.0.0.1:8000/studio)
    """
    from tunelab.studio import app as studio_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_studio_config(config)
    update = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update=update)})
    studio_app.serve(model, cfg, _adapters(adapter or []))


def _store(cfg: StudioConfig) -> JobStore:
    from tunelab.studio.store import JobStore

    return JobStore(cfg.db_url(), cfg.jobs.retries)


@jobs_app.command("submit")
def submit_cmd(
    run_config: Annotated[Path, typer.Argument(help="Run config YAML, as for tunelab train.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides.")] = None,
    config: StudioYaml = None,
) -> None:
    """Queue a run: `tunelab jobs submit examples/sft-lora.yaml train.max_steps=50` (a running studio trains it)."""
    from tunelab import api
    from tunelab.studio.submit import submit

    cfg = load_studio_config(config)
    row = submit(_store(cfg), api.load_config(run_config, overrides or []), stem=run_config.stem)
    typer.echo(f"queued {row['id']}: run {row['run_dir']}")


@jobs_app.command("list")
def list_cmd(config: StudioYaml = None) -> None:
    """The jobs, newest first: id, kind, status, model, run directory."""
    for j in _store(load_studio_config(config)).list_jobs(limit=1000):
        typer.echo(f"{j['id']}  {j['kind']:<11} {j['status']:<10} {j['model']}  {j['run_dir']}")


@jobs_app.command("show")
def show_cmd(job_id: Annotated[str, typer.Argument(help="A job id.")], config: StudioYaml = None) -> None:
    """A job's status and events, oldest first."""
    cfg = load_studio_config(config)
    store = _store(cfg)
    job = store.job(job_id)
    if job is None:
        raise TunelabError(f"no job {job_id!r} in {cfg.db_url()}")
    typer.echo(f"{job['id']}: {job['status']} ({job['kind']}, {job['model']}) run {job['run_dir']}")
    if job["error"]:
        typer.echo(f"error: {job['error']['message']}")
    for e in store.events(job_id, None, 100000, newest_first=False):
        typer.echo(f"  [{e['level']}] {e['message']}")
    typer.echo(f"log: {Path(cfg.jobs.dir).expanduser().resolve() / 'jobs' / job_id / 'train.log'}")


@jobs_app.command("cancel")
def cancel_cmd(job_id: Annotated[str, typer.Argument(help="A job id.")], config: StudioYaml = None) -> None:
    """Cancel a queued or running job (the studio running it stops its training within a second)."""
    store = _store(load_studio_config(config))
    before = store.cancel(job_id)
    if before is None:
        job = store.job(job_id)
        raise TunelabError(f"job {job_id}: " + (f"already {job['status']}" if job else "no such job"))
    store.add_event(job_id, "Job cancelled from the command line")
    typer.echo(f"cancelled {job_id} (was {before})")
