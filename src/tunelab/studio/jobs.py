"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints (OpenAI's fine-tuning API).

A job is checked before it is queued: the fields tunelab does not do are refused (openai_jobs.refusals),
`model` must be the model this server serves (the fine-tuned adapter is loaded beside it), the files must be
uploaded fine-tune files in a format the method trains on, and jobs.defaults plus the job's fields must make
a valid run config. Errors are OpenAI-shaped 400s naming the field (`param`). A key sees its own jobs; admin
keys (and everyone on a server without keys) see all.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from tunelab.errors import TunelabError
from tunelab.serve.deps import rate_limited
from tunelab.serve.errors import ApiError
from tunelab.studio import openai_jobs as oj
from tunelab.studio.files import training_file
from tunelab.studio.service import Studio, studio_of
from tunelab.studio.store import new_id

router = APIRouter(tags=["fine_tuning"], prefix="/v1/fine_tuning/jobs")


@router.post("")
def create(body: oj.JobRequest, request: Request, key_id: str | None = Depends(rate_limited)) -> dict[str, Any]:
    studio = studio_of(request)
    if (refused := oj.refusals(body)) is not None:
        raise ApiError(400, refused[1], param=refused[0])
    if body.model not in (studio.base_id, studio.base_model.name_or_path):
        raise ApiError(400, f"model {body.model!r}: this server fine-tunes the model it serves, "
                            f"{studio.base_id!r} ({studio.base_model.name_or_path})", param="model")  # fmt: skip
    method = oj.method_type(body)
    train = training_file(studio, body.training_file, key_id, "training_file", method)
    valid = (
        training_file(studio, body.validation_file, key_id, "validation_file", method) if body.validation_file else None
    )
    job_id = new_id("ftjob")
    try:
        cfg = oj.build_config(
            body, studio.base_model, studio.cfg.jobs.defaults, train, valid, str(studio.runs_dir), job_id
        )
    except TunelabError as e:
        raise ApiError(400, str(e), param="hyperparameters") from None
    store = studio.store
    row = store.create_job(kind="fine_tuning", owner=key_id, model=body.model, config_yaml=oj.config_text(cfg),
                           run_dir=str(studio.runs_dir / job_id), request=oj.resolved(body, cfg), job_id=job_id)  # fmt: skip
    store.add_event(job_id, f"Created fine-tuning job: {job_id}")
    store.add_event(job_id, f"Validating training file: {body.training_file}" +
                    (f" and validation file: {body.validation_file}" if body.validation_file else ""))  # fmt: skip
    store.add_event(job_id, "Files validated, moving job to queued state")
    studio.queue.wake()
    return oj.job_object(row)


@router.get("")
def list_jobs(request: Request, after: str | None = None, limit: int = 20,
              key_id: str | None = Depends(rate_limited)) -> dict[str, Any]:  # fmt: skip
    studio = studio_of(request)
    limit = max(1, min(limit, 100))
    rows = studio.store.list_jobs(key_id, studio.sees_all(key_id), after, limit + 1, kind="fine_tuning")
    return {"object": "list", "data": [oj.job_object(r) for r in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/{job_id}")
def retrieve(job_id: str, request: Request, key_id: str | None = Depends(rate_limited)) -> dict[str, Any]:
    return oj.job_object(owned_job(studio_of(request), job_id, key_id))


@router.post("/{job_id}/cancel")
def cancel(job_id: str, request: Request, key_id: str | None = Depends(rate_limited)) -> dict[str, Any]:
    studio = studio_of(request)
    job = owned_job(studio, job_id, key_id)
    if studio.store.cancel(job_id) is None:
        raise ApiError(400, f"job {job_id} has already {job['status']}; only queued or running jobs can be cancelled",
                       code="job_not_cancellable")  # fmt: skip
    studio.store.add_event(job_id, "Fine-tuning job cancelled")
    studio.queue.wake()
    return oj.job_object(owned_job(studio, job_id, key_id))


@router.get("/{job_id}/events")
def events(job_id: str, request: Request, after: str | None = None, limit: int = 20,
           key_id: str | None = Depends(rate_limited)) -> dict[str, Any]:  # fmt: skip
    studio = studio_of(request)
    owned_job(studio, job_id, key_id)
    limit = max(1, min(limit, 1000))
    rows = studio.store.events(job_id, _seq(after), limit + 1)
    return {"object": "list", "data": [oj.event_object(r) for r in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/{job_id}/checkpoints")
def checkpoints(job_id: str, request: Request, limit: int = 10,
                key_id: str | None = Depends(rate_limited)) -> dict[str, Any]:  # fmt: skip
    studio = studio_of(request)
    job = owned_job(studio, job_id, key_id)
    name = job["fine_tuned_model"] or oj.fine_tuned_name(studio.base_id, (job["request"] or {}).get("suffix"), job_id)
    rows = studio.store.checkpoints(job_id)
    data = [oj.checkpoint_object(r, name) for r in rows[: max(1, limit)]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}  # fmt: skip


def owned_job(studio: Studio, job_id: str, key_id: str | None) -> dict[str, Any]:
    job = studio.store.job(job_id)
    if job is None or not (studio.sees_all(key_id) or job["owner"] == key_id):
        raise ApiError(404, f"no fine-tuning job {job_id!r}", "invalid_request_error", "job_not_found")
    return job


def _seq(after: str | None) -> int | None:
    if after is None:
        return None
    try:
        return int(after.removeprefix("ftevent-"))
    except ValueError:
        raise ApiError(400, f"after: expected an event id (ftevent-N), got {after!r}", param="after") from None
