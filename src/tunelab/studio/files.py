"""/v1/files: upload (purpose fine-tune), list, retrieve, content, delete.

An upload is stored under JOBS_DIR/files/FILE_ID/ and checked by the data toolkit (`tunelab data check`:
tunelab.quality.check) before it gets an id: a file with errors (invalid JSON, a record its format cannot
read, a conversation with nothing to train, a secret) is refused with a 400 whose message lists the
findings by file name and line, and nothing is kept. Warnings (duplicates, PII) are accepted and named in
the file's `status_details`. Uploads are limited by `files.max_bytes` (the rest of the API keeps the serve
config's smaller body limit): they are answered by their own small app (see app.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from tunelab.config import CheckOptions
from tunelab.quality.check import check
from tunelab.quality.report import CheckReport, Problem
from tunelab.serve.deps import rate_limited
from tunelab.serve.errors import ApiError
from tunelab.studio.openai_jobs import file_object
from tunelab.studio.service import Studio, studio_of
from tunelab.studio.store import new_id

SFT_FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
FORMATS_FOR = {"supervised": SFT_FORMATS, "dpo": ("preference",)}
MAX_LISTED = 20  # findings quoted in one error message

router = APIRouter(tags=["files"])
upload_router = APIRouter(tags=["files"])


@upload_router.post("/v1/files")
def upload(
    request: Request,
    file: UploadFile = File(...),
    purpose: str = Form(...),
    key_id: str | None = Depends(rate_limited),
) -> dict[str, Any]:
    studio = studio_of(request)
    if purpose != "fine-tune":
        raise ApiError(400, f"purpose {purpose!r}: tunelab stores files for fine-tune only", param="purpose")
    name = safe_name(file.filename or "upload.jsonl")
    if not name.endswith(".jsonl"):
        raise ApiError(400, f"{name}: fine-tuning files are JSONL (one JSON object per line, .jsonl)", param="file")
    file_id = new_id("file")
    folder = studio.files_dir / file_id
    folder.mkdir(parents=True)
    path = folder / name
    try:
        with path.open("wb") as out:
            shutil.copyfileobj(file.file, out, 1 << 20)
        report = check([str(path)], options=CheckOptions(near_duplicates=False))
        if report.errors or not report.files or report.files[0]["valid"] == 0:
            raise ApiError(400, findings(report, folder, name), code="invalid_file", param="file")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    stats = report.files[0]
    row = studio.store.add_file(id=file_id, filename=name, purpose=purpose, bytes=path.stat().st_size,
                                path=str(path), format=stats.get("format"), records=stats.get("valid"),
                                owner=key_id)  # fmt: skip
    return file_object(row) | {"status_details": warnings(report, folder)}


@router.get("/v1/files")
def list_files(request: Request, purpose: str | None = None, key_id: str | None = Depends(rate_limited)) -> dict:
    studio = studio_of(request)
    rows = studio.store.list_files(key_id, studio.sees_all(key_id), purpose)
    return {"object": "list", "data": [file_object(r) for r in rows], "has_more": False}


@router.get("/v1/files/{file_id}")
def get_file(file_id: str, request: Request, key_id: str | None = Depends(rate_limited)) -> dict[str, Any]:
    return file_object(owned_file(studio_of(request), file_id, key_id))


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, request: Request, key_id: str | None = Depends(rate_limited)) -> FileResponse:
    row = owned_file(studio_of(request), file_id, key_id)
    return FileResponse(row["path"], filename=row["filename"], media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, request: Request, key_id: str | None = Depends(rate_limited)) -> dict[str, Any]:
    studio = studio_of(request)
    row = owned_file(studio, file_id, key_id)
    studio.store.delete_file(file_id)
    shutil.rmtree(Path(row["path"]).parent, ignore_errors=True)
    return {"object": "file", "id": file_id, "deleted": True}


def owned_file(studio: Studio, file_id: str, key_id: str | None) -> dict[str, Any]:
    row = studio.store.file(file_id)
    if row is None or not (studio.sees_all(key_id) or row["owner"] == key_id):
        raise ApiError(404, f"no file {file_id!r}", "invalid_request_error", "file_not_found")
    return row


def training_file(studio: Studio, file_id: str, key_id: str | None, param: str, method: str) -> tuple[str, str]:
    """(path, format) of an uploaded fine-tune file that `method` (supervised, dpo) can train on."""
    try:
        row = owned_file(studio, file_id, key_id)
    except ApiError:
        raise ApiError(400, f"{param}: no file {file_id!r} (upload it with purpose fine-tune)", param=param) from None
    if row["purpose"] != "fine-tune":
        raise ApiError(400, f"{param}: file {file_id} has purpose {row['purpose']}, not fine-tune", param=param)
    if row["format"] not in FORMATS_FOR[method]:
        want = ", ".join(FORMATS_FOR[method])
        raise ApiError(400, f"{param}: {row['filename']} is in the {row['format']} format; method {method} trains "
                            f"on {want} (docs/openai-migration.md shows each)", param=param)  # fmt: skip
    return row["path"], row["format"]


def safe_name(name: str) -> str:
    base = Path(name.replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:200] or "upload.jsonl"


def findings(report: CheckReport, folder: Path, name: str) -> str:
    """The data check's errors, by file name and line (not the server's path)."""
    errors = [entry for p in report.errors for entry in _entries(p)]
    if not errors:
        return f"{name}: no valid records"
    lines = [_local(e, folder) for e in errors[:MAX_LISTED]]
    more = f" (and {len(errors) - MAX_LISTED} more)" if len(errors) > MAX_LISTED else ""
    return f"{name} failed the data check with {len(errors)} error(s){more}: " + "; ".join(lines)


def _entries(problem: Problem) -> list[str]:
    """One entry per bad record where the check groups them (its schema finding names only the first)."""
    if problem.locations and all("error" in loc for loc in problem.locations):
        return [f"[{problem.code}] {loc['error']}" for loc in problem.locations]
    return [f"[{problem.code}] {problem.message}"]


def warnings(report: CheckReport, folder: Path) -> str | None:
    found = report.by_severity("warning")
    if not found:
        return None
    return f"{len(found)} warning(s): " + "; ".join(f"[{p.code}] {_local(p.message, folder)}" for p in found[:10])


def _local(message: str, folder: Path) -> str:
    return message.replace(str(folder) + "/", "")
