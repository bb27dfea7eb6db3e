"""The web UI: pages under /studio (static HTML + scripts shipped in the package, no CDN) and the JSON they
read under /studio/api.

Pages carry no data, so they are served to anyone; every /studio/api call needs an admin key when the server
has keys (the page asks for the key once and keeps it in the tab's sessionStorage, sent as a bearer token:
no cookie, so no cross-site request can use it). On a server without keys (127.0.0.1 only) it is open.
Pages: the runs and jobs list, a run (live curves, its comparison with its base, its job's events and log),
a comparison of N runs, the new-run form, the dataset preview, the chat playground (two models side by
side, through the server's own /v1/chat/completions) and the feedback review queue (review.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse

from tunelab import api
from tunelab.config import CheckOptions
from tunelab.errors import TunelabError
from tunelab.quality.check import check_datasets, load
from tunelab.serve.deps import caller, get_state
from tunelab.serve.errors import ApiError
from tunelab.serve.state import ServerState
from tunelab.studio import review, runs, submit
from tunelab.studio.service import Studio, studio_of

STATIC = Path(__file__).parent / "static"
PAGES = {"": "index.html", "runs": "run.html", "compare": "compare.html", "new": "new.html", "data": "data.html",
         "chat": "chat.html", "jobs": "job.html", "feedback": "feedback.html"}  # fmt: skip
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".txt": "text/plain"}
LOG_TAIL = 20000  # characters of a job's log shown on its page
PREVIEW_ROWS = 20


def studio_admin(key_id: str | None = Depends(caller), state: ServerState = Depends(get_state)) -> str | None:
    """An admin key (or a server without keys). Not rate limited: the pages poll while a run trains."""
    if not state.keys.open and key_id not in state.keys.admin_ids:
        raise ApiError(403, "the studio needs an admin key (auth.admin_key_ids)", "permission_error")
    return key_id


pages = APIRouter(tags=["studio"], include_in_schema=False)
guarded = APIRouter(prefix="/studio/api", tags=["studio"], dependencies=[Depends(studio_admin)])


# ------------------------------------------------------------------------------------------------ pages


@pages.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/studio")


@pages.get("/studio")
@pages.get("/studio/{page}")
@pages.get("/studio/{page}/{rest:path}")
def page(page: str = "", rest: str = "") -> FileResponse:
    if page not in PAGES:
        raise ApiError(404, f"no studio page {page!r}", "not_found_error")
    return FileResponse(STATIC / PAGES[page], media_type="text/html", headers={"cache-control": "no-cache"})


@pages.get("/studio-static/{name}")
def static(name: str) -> FileResponse:
    path = STATIC / name
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.is_file() or path.suffix not in TYPES:
        raise ApiError(404, f"no static file {name!r}", "not_found_error")
    return FileResponse(path, media_type=TYPES[path.suffix])


# ------------------------------------------------------------------------------------------------ runs


def _runs(studio: Studio) -> runs.Runs:
    return runs.Runs([*studio.cfg.run_dirs, studio.runs_dir])


def _jobs_by_dir(studio: Studio) -> dict[str, dict[str, Any]]:
    return {j["run_dir"]: j for j in reversed(studio.store.list_jobs(limit=1000))}


@guarded.get("/overview")
def overview(request: Request) -> dict[str, Any]:
    studio = studio_of(request)
    rs, by_dir = _runs(studio), _jobs_by_dir(studio)
    listed = [runs.summary(n, p) | {"job": _job_brief(by_dir.get(str(p)))} for n, p in rs.all()]
    jobs = [_brief(j) | {"run": rs.name_of(j["run_dir"])} for j in studio.store.list_jobs(limit=200)]
    return {"runs": listed, "jobs": jobs, "base_model": studio.base_id}


@guarded.get("/run")
def run_detail(request: Request, name: str) -> dict[str, Any]:
    studio = studio_of(request)
    by_dir = _jobs_by_dir(studio)
    path = _run_path(studio, name, by_dir)
    text = (path / "config.yaml").read_text() if (path / "config.yaml").is_file() else None
    if text is None and (job := by_dir.get(str(path))) is not None:
        text = job["config_yaml"]
    return {"name": name, "path": str(path), "status": runs.file_status(path), "config": text,
            "comparison": runs.comparison(path), "job": _job_brief(by_dir.get(str(path)))}  # fmt: skip


@guarded.get("/run/metrics")
def run_metrics(request: Request, name: str, after: int = 0) -> dict[str, Any]:
    """The records after the first `after` (so a page polls for what is new) and the run's progress."""
    studio = studio_of(request)
    by_dir = _jobs_by_dir(studio)
    path = _run_path(studio, name, by_dir)
    recs = runs.read_records(path)
    job = by_dir.get(str(path))
    return {"records": recs[after:], "next": len(recs), "progress": runs.progress(recs),
            "status": job["status"] if job else runs.file_status(path), "job": _job_brief(job)}  # fmt: skip


@guarded.get("/compare")
def compare(request: Request, names: str) -> dict[str, Any]:
    """Curves, base comparisons and the config diff of the runs named (comma-separated)."""
    studio = studio_of(request)
    by_dir = _jobs_by_dir(studio)
    picked = [n for n in names.split(",") if n]
    if len(picked) < 2:
        raise ApiError(400, "compare: name two runs or more", param="names")
    paths = {n: _run_path(studio, n, by_dir) for n in picked}
    out = []
    for n, p in paths.items():
        recs = runs.read_records(p)
        out.append({"name": n, "curves": runs.curves(recs), "comparison": runs.comparison(p),
                    "has_eval": (p / "eval" / "final.json").is_file(), **runs.progress(recs)})  # fmt: skip
    diff = runs.config_diff({n: runs.read_config(p) for n, p in paths.items()})
    return {"runs": out, "config_diff": diff}


@guarded.post("/compare/pair")
def compare_pair(request: Request, a: str = Body(...), b: str = Body(...)) -> dict[str, Any]:
    """Run A vs run B on their saved evaluations (eval/final.json, the same examples and decoding): paired
    bootstrap CIs per score and the flipped examples, regressions first (tunelab.eval's compare)."""
    studio = studio_of(request)
    by_dir = _jobs_by_dir(studio)
    results = []
    for n in (a, b):
        final = _run_path(studio, n, by_dir) / "eval" / "final.json"
        if not final.is_file():
            raise ApiError(400, f"run {n}: no eval/final.json (evaluate it: tunelab eval RUN)", param="a")
        results.append(str(final))
    out = studio.root / "compare" / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{a}--{b}")
    try:
        done = api.compare(results[0], results[1], out=out)
    except TunelabError as e:
        raise ApiError(400, str(e)) from None
    cmp = dict(done.comparison)
    cmp["flipped"] = runs.flipped_regressions_first(cmp.get("flipped", []))
    return {"a": a, "b": b, "comparison": cmp, "report": [str(p) for p in done.report]}


def _run_path(studio: Studio, name: str, by_dir: dict[str, dict[str, Any]]) -> Path:
    try:
        return _runs(studio).path(name, set(by_dir))
    except TunelabError as e:
        raise ApiError(404, str(e), "not_found_error") from None


# ------------------------------------------------------------------------------------------------ jobs


@guarded.post("/validate")
def validate(text: str = Body(..., embed=True)) -> dict[str, Any]:
    try:
        return {"ok": True, "summary": submit.describe(submit.check_text(text))}
    except TunelabError as e:
        return {"ok": False, "error": str(e)}


@guarded.post("/jobs")
def submit_job(request: Request, text: str = Body(...), name: str | None = Body(None)) -> dict[str, Any]:
    studio = studio_of(request)
    overrides = [f"output.name={name}"] if name else []
    try:
        cfg = submit.check_text(text, overrides)
        if cfg.output.dir == "runs":  # the default: the studio's own run folder
            cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": str(studio.runs_dir)})})
        row = submit.submit(studio.store, cfg)
    except TunelabError as e:
        raise ApiError(400, str(e), param="text") from None
    studio.queue.wake()
    return _brief(row) | {"run": _runs(studio).name_of(row["run_dir"])}


@guarded.get("/jobs/{job_id}")
def job_detail(request: Request, job_id: str, after: int = 0) -> dict[str, Any]:
    studio = studio_of(request)
    job = studio.store.job(job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}", "not_found_error")
    log = studio.queue.job_dir(job_id) / "train.log"
    tail = log.read_text(errors="replace")[-LOG_TAIL:] if log.is_file() else ""
    events = studio.store.events(job_id, after or None, 1000, newest_first=False)
    return {"job": _job_brief(job), "run": _runs(studio).name_of(job["run_dir"]), "log": tail,
            "events": [{k: e[k] for k in ("seq", "created_at", "level", "type", "message")} for e in events]}  # fmt: skip


@guarded.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str) -> dict[str, Any] | None:
    studio = studio_of(request)
    if studio.store.cancel(job_id) is None:
        raise ApiError(400, f"job {job_id} is not queued or running")
    studio.store.add_event(job_id, "Job cancelled from the studio")
    studio.queue.wake()
    return _job_brief(studio.store.job(job_id))


def _job_brief(job: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if job is None else _brief(job)


def _brief(job: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "kind", "status", "model", "created_at", "started_at", "finished_at", "fine_tuned_model", "error")
    return {k: job[k] for k in keep} | {"run_dir": job["run_dir"]}


# ------------------------------------------------------------------------------------------------ data


@guarded.get("/data")
def data_preview(request: Request, path: str) -> dict[str, Any]:
    """The first records of a data file and the data check's findings on the whole file."""
    studio = studio_of(request)
    p = _data_path(studio, path)
    options = CheckOptions()
    ds = load(str(p), "train", options)
    report = check_datasets([ds], options)
    rows = [{"line": it.line, "record": it.index, "row": it.row, "error": it.error} for it in ds.items[:PREVIEW_ROWS]]
    return {"path": str(p), "format": ds.format, "records": len(ds.items), "rows": json.loads(json.dumps(rows, default=str)),
            "report": report.to_dict()}  # fmt: skip


def _data_path(studio: Studio, path: str) -> Path:
    p = Path(path).expanduser().resolve()
    roots = [Path(d).expanduser().resolve() for d in studio.cfg.data_dirs] + [studio.files_dir]
    if not any(p == r or r in p.parents for r in roots):
        raise ApiError(403, f"{p} is outside the folders the studio may read (data_dirs: "
                            f"{', '.join(map(str, roots))})", "permission_error")  # fmt: skip
    if not p.is_file():
        raise ApiError(404, f"{p}: no such file", "not_found_error")
    return p


# ------------------------------------------------------------------------------------------------ feedback


@guarded.get("/feedback")
def feedback(request: Request) -> dict[str, Any]:
    return review.status(request.app)


router = APIRouter()
router.include_router(guarded)  # before the pages: /studio/{page} would match /studio/api/...
router.include_router(pages)
