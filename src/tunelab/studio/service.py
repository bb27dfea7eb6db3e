"""The studio's running parts in one object: the queue's database, the queue, the engine that serves the base
model (and each fine-tuned model once its job succeeds), and the folders. Routers reach it through
`studio_of(request)` (it hangs on `app.state.studio`).

A job that succeeds is finished here, on the queue's thread, before it is marked succeeded: a fine-tuning
job's adapter is validated and loaded into the engine under its `fine_tuned_model` name, and its result
files are written (results.py). So a client that sees `succeeded` can use the model at once. At start the
fine-tuned models of earlier jobs are loaded again, so they survive a restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from fastapi import Request

from tunelab.config import ModelConfig
from tunelab.serve.adapters import validate_adapter
from tunelab.serve.engine import Engine
from tunelab.serve.security import KeyRing
from tunelab.studio import results
from tunelab.studio.config import StudioConfig
from tunelab.studio.openai_jobs import fine_tuned_name
from tunelab.studio.queue import JobQueue
from tunelab.studio.store import JobStore

log = logging.getLogger("tunelab.studio")


class Studio:
    def __init__(self, cfg: StudioConfig, engine: Engine, base: ModelConfig, keys: KeyRing) -> None:
        self.cfg, self.engine, self.base_model, self.keys = cfg, engine, base, keys
        self.root = Path(cfg.jobs.dir).expanduser().resolve()
        self.files_dir = self.root / "files"
        self.runs_dir = Path(cfg.jobs.runs_dir).expanduser().resolve()
        self.store = JobStore(cfg.db_url(), cfg.jobs.retries)
        self.queue = JobQueue(self.store, cfg.jobs, self.finished)

    @property
    def base_id(self) -> str:
        return self.engine.model_ids()[0]

    def sees_all(self, key_id: str | None) -> bool:
        """An open server (no keys) and admin keys see every job and file; other keys their own."""
        return key_id is None or key_id in self.keys.admin_ids

    def start(self) -> None:
        self.queue.start()
        for job in self.store.succeeded_models():
            name, final = job["fine_tuned_model"], Path(job["run_dir"]) / "final"
            if name in self.engine.model_ids():
                continue
            try:
                self.load_model(name, final)
            except Exception as e:  # one bad folder must not keep the server from starting
                log.warning("fine-tuned model %s not served: %s", name, e)

    def stop(self) -> None:
        self.queue.stop()

    def load_model(self, name: str, folder: Path) -> None:
        validate_adapter(folder, getattr(self.engine, "model", None))
        asyncio.run(self.engine.load_adapter(name, folder))  # the engine's own thread loads it

    def finished(self, job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """What a succeeded job's row gets: its served model, its result files, its trained tokens."""
        updates: dict[str, Any] = {"run_dir": str(run_dir), "trained_tokens": results.trained_tokens(run_dir)}
        if job["kind"] == "fine_tuning":
            name = fine_tuned_name(self.base_id, (job["request"] or {}).get("suffix"), job["id"])
            self.load_model(name, run_dir / "final")
            self.store.add_event(job["id"], f"New fine-tuned model created: {name}", {"fine_tuned_model": name})
            updates["fine_tuned_model"] = name
        files, summary = results.write(self.store, job, run_dir, self.files_dir)
        for line in summary:
            self.store.add_event(job["id"], line)
        updates["result_files"] = files
        return updates


def studio_of(request: Request) -> Studio:
    return request.app.state.studio
