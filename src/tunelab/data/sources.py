"""Read rows from a user's data: JSONL, JSON (array), CSV, Parquet, local `datasets` folders, hub ids.

Every row comes with where it came from (file, 1-based line for line-oriented files, 0-based record index
otherwise) so that any later error can point at it. Reading is lazy where the format allows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Row:
    data: dict[str, Any]
    source: str
    index: int  # 0-based record index within the source
    line: int | None = None  # 1-based line in the file, where the format has lines

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(
            message, where=self.source, line=self.line, record=None if self.line else self.index, field=field
        )


def read_rows(path: str, split: str = "train") -> Iterator[Row]:
    """Yield rows of a file, a saved `datasets` folder, or a hub dataset id."""
    p = Path(path).expanduser()
    if p.is_dir():
        yield from _read_datasets_folder(p, split)
        return
    if not p.exists():
        if _looks_like_hub_id(path):
            yield from _read_hub(path, split)
            return
        raise DataError(
            "file not found (expected a .jsonl/.json/.csv/.parquet file, a datasets folder or a hub id)",
            where=path,
        )
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataError(f"unsupported file type {p.suffix!r}; expected one of {', '.join(SUFFIXES)}", where=path)
    if p.stat().st_size == 0:
        raise DataError("file is empty", where=path)
    yield from READERS[kind](p)


@dataclass(frozen=True)
class BadRow:
    """A line of a line-oriented file (JSONL, CSV) that is not a record; `problem` says why."""

    source: str
    index: int
    line: int
    problem: str


def iter_jsonl(p: Path) -> Iterator[Row | BadRow]:
    """Every non-blank line as a Row or a BadRow: the data toolkit reports all bad lines, training stops at one."""
    index = 0
    with p.open(encoding="utf-8") as f:
        for lineno, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
                problem = None if isinstance(data, dict) else f"expected a JSON object, got {type(data).__name__}"
            except json.JSONDecodeError as e:
                problem = f"invalid JSON ({e.msg} at column {e.colno})"
            yield BadRow(str(p), index, lineno, problem) if problem else Row(data, str(p), index, lineno)
            index += 1


def iter_csv(p: Path) -> Iterator[Row | BadRow]:
    """Every CSV row (after the header) as a Row or, with too many or too few fields, a BadRow."""
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, restkey="\0extra")
        if not reader.fieldnames:
            raise DataError("CSV has no header row", where=str(p))
        width = len(reader.fieldnames)
        index, start = 0, reader.line_num + 1
        for data in reader:
            if "\0extra" in data:
                yield BadRow(str(p), index, start, f"row has more fields than the header ({width})")
            elif any(v is None for v in data.values()):
                yield BadRow(str(p), index, start, f"row has fewer fields than the header ({width})")
            else:
                yield Row(dict(data), str(p), index, start)
            index, start = index + 1, reader.line_num + 1


def _strict(rows: Iterator[Row | BadRow], p: Path, empty: str) -> Iterator[Row]:
    """The first bad line is an error; a file with no record at all too."""
    n = 0
    for row in rows:
        if isinstance(row, BadRow):
            raise DataError(row.problem, where=row.source, line=row.line)
        n += 1
        yield row
    if n == 0:
        raise DataError(empty, where=str(p))


def _read_jsonl(p: Path) -> Iterator[Row]:
    return _strict(iter_jsonl(p), p, "file has no records (only blank lines)")


def _read_csv(p: Path) -> Iterator[Row]:
    return _strict(iter_csv(p), p, "CSV has a header but no rows")


def _read_json(p: Path) -> Iterator[Row]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", where=str(p), line=e.lineno) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} wrappers are common
    if not isinstance(data, list):
        raise DataError("expected a JSON array of records (or JSONL with one object per line)", where=str(p))
    if not data:
        raise DataError("JSON array is empty", where=str(p))
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"expected a JSON object, got {type(item).__name__}", where=str(p), record=i)
        yield Row(item, str(p), i)


def _read_parquet(p: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read Parquet: {e}", where=str(p)) from None
    if table.num_rows == 0:
        raise DataError("Parquet file has no rows", where=str(p))
    for i, data in enumerate(table.to_pylist()):
        yield Row(data, str(p), i)


def _read_datasets_folder(p: Path, split: str) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError:
        raise DataError(
            "folder is not a saved datasets folder (save_to_disk) and holds no data file", where=str(p)
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"split {split!r} not found; available: {', '.join(ds)}", where=str(p), field="split")
        ds = ds[split]
    for i, data in enumerate(ds):
        yield Row(dict(data), str(p), i)


def _looks_like_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and "." not in Path(path).suffix


def _read_hub(repo_id: str, split: str) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id, split=split)
    except Exception as e:
        raise DataError(
            f"could not load hub dataset (no network or not found: {type(e).__name__}). "
            "Download it elsewhere and point data.*.path at a local file or a save_to_disk folder.",
            where=repo_id,
        ) from None
    for i, data in enumerate(ds):
        yield Row(dict(data), repo_id, i)


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
