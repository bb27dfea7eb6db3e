"""The studio's configuration (`studio.yaml`): the server it runs (a serve.yaml's sections under `serve:`),
the job queue, uploaded files and the folders it reads.

Every field has a default, so `tunelab studio MODEL` runs with no file: the queue in studio/studio.db,
one training job at a time on this machine, runs under runs/. `jobs.defaults` is the run config that
OpenAI-style jobs start from (their fields override it, docs/openai-migration.md says which).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.config import load_yaml_model
from tunelab.serve.config import ServeConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# What an OpenAI-style job trains when jobs.defaults says nothing else: a LoRA adapter (served at once beside the
# base), a checkpoint every 10 steps (a restarted service resumes from it), loss before and after on the
# validation file (the base-vs-fine-tuned comparison).
JOB_DEFAULTS: dict[str, Any] = {
    "tuning": {"mode": "lora", "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"}},
    "train": {"epochs": 3, "batch_size": 8, "lr": 2.0e-4, "log_every": 1, "save_every": 10},
    "eval": {"metrics": ["loss"], "forgetting": {"enabled": False}},
}


class JobsConfig(_Section):
    dir: str = Field("studio", description="Folder of the queue's database, uploaded files and each job's log.")
    url: str | None = Field(
        None, description="Queue database URL (sqlite:///x.db, postgresql+psycopg://...); default JOBS_DIR/studio.db."
    )
    max_running: int = Field(
        1, ge=0, description="Training jobs run at once on this machine (0: none; services sharing the database train)."
    )
    poll_s: float = Field(
        0.5, gt=0, le=60, description="How often the queue looks for new, finished and cancelled jobs."
    )
    shutdown_timeout_s: float = Field(
        120, ge=0, description="On shutdown, how long a running job gets to save a checkpoint before it is killed."
    )
    runs_dir: str = Field("runs", description="Folder the jobs' run directories are written to.")
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Run config sections OpenAI-style jobs start from, merged over the built-in ones (LoRA, 3 "
        "epochs, a checkpoint every 10 steps); tuning must stay lora or dora.",
    )
    retries: int = Field(5, ge=0, description="Retries of a failed database operation (locked, connection lost).")


class FilesConfig(_Section):
    max_bytes: int = Field(
        512 * 2**20, ge=1024, description="Largest upload to /v1/files (OpenAI's limit is 512 MB); larger gets 413."
    )


class StudioConfig(_Section):
    serve: ServeConfig = Field(
        default_factory=ServeConfig, description="The server: host, port, keys, limits, guard (serve.yaml's keys)."
    )
    jobs: JobsConfig = Field(default_factory=JobsConfig, description="The job queue.")
    files: FilesConfig = Field(default_factory=FilesConfig, description="Uploads to /v1/files.")
    run_dirs: list[str] = Field(
        default_factory=lambda: ["runs"],
        description="Folders whose run directories the studio lists (and jobs.runs_dir).",
    )
    data_dirs: list[str] = Field(
        default_factory=lambda: ["."],
        description="Folders the dataset preview may read (and uploaded files); paths elsewhere are refused.",
    )
    ui: bool = Field(True, description="Serve the web UI under /studio (false: the jobs API only).")

    def db_url(self) -> str:
        return self.jobs.url or f"sqlite:///{Path(self.jobs.dir).expanduser().resolve() / 'studio.db'}"


def load_studio_config(path: str | Path | None) -> StudioConfig:
    """studio.yaml -> StudioConfig (defaults when path is None); errors name the file, line and key."""
    return load_yaml_model(StudioConfig, path, expected="serve, jobs, files, run_dirs, data_dirs, ui")
