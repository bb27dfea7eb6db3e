"""Write rows back out in the format their suffix names, and hash files for manifests and data cards.

Output keeps the input's shape: JSONL one object per line, JSON an array, CSV with the union of the rows'
columns in first-seen order (nested values JSON-encoded, since CSV cells are strings), Parquet via pyarrow.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

WRITABLE = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in WRITABLE:
        raise TunelabError(f"{p}: cannot write {suffix or 'files without a suffix'}; use one of {', '.join(WRITABLE)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".jsonl", ".ndjson"):
        with p.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif suffix == ".json":
        p.write_text(json.dumps(list(rows), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with p.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(rows)), p)
    return p


def _cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def derived_path(path: str | Path, tag: str, suffix: str | None = None) -> Path:
    """`data/train.jsonl` -> `data/train.<tag>.jsonl` (or with another suffix)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{tag}{suffix or p.suffix}")
