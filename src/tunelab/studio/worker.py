"""One job's training, in its own process: `python -m tunelab.studio.worker DB_URL JOB_ID JOB_DIR`.

The queue (queue.py) starts it with stdout and stderr going to JOB_DIR/train.log. It trains the job's run
config with `tunelab.api.train`, resuming from the run's last checkpoint when the job is marked `resume`
(a service stopped or died while it ran), and writes the job's events (steps, losses, checkpoints) to the
queue's database as they happen. Its exit status and JOB_DIR/result.json tell the queue how it ended:

  0   trained; result.json has run_dir
  75  interrupted (SIGTERM from a stopping service, or its service died): a checkpoint was saved
  2   a user error (bad data, bad config): result.json has the message
  1   anything else (the traceback is in train.log)

A worker whose service dies stops at the next step boundary with a checkpoint, so a restarted service
never finds two trainings of one job.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from tunelab import api
from tunelab.errors import DataError, TunelabError
from tunelab.studio.store import JobStore
from tunelab.train import checkpoint as ckpt

INTERRUPTED = 75  # EX_TEMPFAIL: try again later (from the checkpoint)


def main(argv: list[str]) -> int:
    url, job_id, job_dir = argv[0], argv[1], Path(argv[2])
    store = JobStore(url)
    job = store.job(job_id)
    if job is None:
        print(f"no job {job_id} in {url}", file=sys.stderr)
        return 1
    try:
        run_dir = train(store, job, job_dir)
    except api.TrainingInterrupted as e:
        _result(job_dir, {"interrupted_at": e.step, "checkpoint": str(e.checkpoint)})
        return INTERRUPTED
    except TunelabError as e:
        _result(job_dir, {"error": str(e), "code": "invalid_training_data" if _is_data(e) else "invalid_config"})
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        traceback.print_exc()
        _result(job_dir, {"error": f"{type(e).__name__}: {e}", "code": "server_error"})
        return 1
    _result(job_dir, {"run_dir": str(run_dir)})
    return 0


def train(store: JobStore, job: dict[str, Any], job_dir: Path) -> Path:
    path = job_dir / "config.yaml"
    path.write_text(job["config_yaml"])
    cfg = api.load_config(path)
    run_dir = Path(job["run_dir"])
    resume = bool(job["resume"]) and ckpt.latest(run_dir / "checkpoints") is not None
    if not resume and run_dir.exists():  # an earlier attempt that never reached a checkpoint: start over there
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"overwrite": True})})
    if job["resume"] and not resume:
        store.add_event(job["id"], "No checkpoint was saved before the interruption; training starts over")
    return api.train(cfg, resume=resume, hooks=_hooks(store, job["id"]), config_path=path)


def _hooks(store: JobStore, job_id: str) -> api.Hooks:
    parent = os.getppid()
    seen: dict[str, Any] = {"total": None, "last": {}}

    def on_start(step: int, total: int) -> None:
        seen["total"] = total
        if step:
            store.add_event(job_id, f"Resumed from the checkpoint at step {step} of {total}", {"step": step})
        else:
            store.add_event(job_id, f"Training started: {total} steps", {"total_steps": total})

    def on_log(rec: dict[str, Any]) -> None:
        data = _metrics(rec, seen["total"])
        seen["last"] = {**seen["last"], **data}
        loss = "training loss" if "train_loss" in data else "validation loss"
        value = data.get("train_loss", data.get("valid_loss"))
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        store.add_event(job_id, f"Step {rec['step']}/{seen['total']}: {loss}={text}", data, type_="metrics")

    def on_checkpoint(path: Path) -> None:
        step = int(path.name.split("-")[-1])
        store.add_checkpoint(job_id, step, str(path), seen["last"] or None)
        store.add_event(job_id, f"Checkpoint created at step {step}", {"step": step})

    def on_step_end(step: int) -> None:
        if os.getppid() != parent:  # the service died: stop at this step with a checkpoint, as on SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)

    return api.Hooks(on_log=on_log, on_step_end=on_step_end, on_checkpoint=on_checkpoint, on_start=on_start)


def _metrics(rec: dict[str, Any], total: int | None) -> dict[str, Any]:
    """A metrics record in OpenAI's event names (train_loss, valid_loss), the rest as tunelab logs them."""
    names = {"loss": "train_loss", "eval_loss": "valid_loss"}
    return {"total_steps": total, **{names.get(k, k): v for k, v in rec.items()}}


def _is_data(e: TunelabError) -> bool:
    return isinstance(e, DataError)


def _result(job_dir: Path, obj: dict[str, Any]) -> None:
    (job_dir / "result.json").write_text(json.dumps(obj))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
