"""Run configs into the queue: what the studio's new-run form and `tunelab jobs submit` call.

A config is checked exactly as `tunelab train` checks it (tunelab.api.load_config: unknown keys, types,
the method's facts), and its errors are tunelab's own, naming the line. A queued run gets a fixed run
directory (output.dir/output.name; the name defaults to the config's stem and the time) so its curves can be
watched from the first step, and the resolved config is what the worker trains.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from tunelab import api
from tunelab.config import RunConfig, dump_config
from tunelab.errors import ConfigError
from tunelab.studio.store import JobStore, new_id

FORM_NAME = "config.yaml"  # how errors name the text typed into the form


def check_text(text: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run config of YAML `text`; ConfigError messages name `config.yaml` and the line, as the CLI's do."""
    with tempfile.TemporaryDirectory(prefix="tunelab-form-") as tmp:
        path = Path(tmp) / FORM_NAME
        path.write_text(text)
        try:
            return api.load_config(path, overrides)
        except ConfigError as e:
            raise ConfigError(str(e).replace(str(path), FORM_NAME)) from None


def submit(store: JobStore, cfg: RunConfig, owner: str | None = None, stem: str = "run") -> dict[str, Any]:
    """Queue `cfg` as a job of kind `run`; returns its row. Refuses a run directory that already exists."""
    name = cfg.output.name or f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(cfg.output.dir).expanduser().resolve()
    run_dir = out_dir / name
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.output.overwrite:
        raise ConfigError(f"output.name: {run_dir} already exists; choose another name or set output.overwrite")
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": str(out_dir), "name": name})})
    job_id = new_id("job")
    row = store.create_job(kind="run", owner=owner, model=cfg.model.name_or_path, config_yaml=dump_config(cfg),
                           run_dir=str(run_dir), request={"name": name}, job_id=job_id)  # fmt: skip
    store.add_event(job_id, f"Queued run {name} ({cfg.method.name}, {cfg.tuning.mode} on {cfg.model.name_or_path})")
    return row


def describe(cfg: RunConfig) -> dict[str, Any]:
    """What the form shows for a valid config."""
    return {"method": cfg.method.name, "tuning": cfg.tuning.mode, "model": cfg.model.name_or_path,
            "train_files": [d.path for d in cfg.data.train], "eval_files": [d.path for d in cfg.data.eval],
            "epochs": cfg.train.epochs, "max_steps": cfg.train.max_steps, "stages": [s.name for s in cfg.stages]}  # fmt: skip
