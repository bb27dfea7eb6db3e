"""`tunelab data clean`: write a cleaned copy of a data file and a report of every change.

The input is never modified: the output must be a different path (default `<name>.clean<suffix>`), and
the report (`<output>.report.json`) lists each change with the record's line, what was done and why.
Fixes run in a fixed order so the report reads naturally: drop rows that do not parse, trim text fields,
redact or drop PII, drop records with an empty text field, drop records whose input leaks into the given
eval/test files, then drop exact and near duplicates keeping the first occurrence. Trimming and redaction
act on the raw row's string fields, so the output keeps the input's shape and extra columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.errors import TunelabError
from tunelab.quality.dedup import clusters, exact_groups, near_pairs
from tunelab.quality.io import derived_path, write_rows
from tunelab.quality.items import Item, load_dataset, reparse, set_leaf, text_hash
from tunelab.quality.pii import PII_KINDS, find_pii, redact_pii


class CleanOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    trim: bool = Field(True, description="Strip leading and trailing whitespace from every text field.")
    drop_invalid: bool = Field(True, description="Drop rows that fail the format (always for unreadable lines).")
    drop_empty: bool = Field(True, description="Drop records with an empty or whitespace-only text field.")
    dedup: bool = Field(True, description="Drop exact duplicates (normalized text and label), keeping the first.")
    near_dedup: bool = Field(False, description="Drop near-duplicates (MinHash/LSH), keeping the first.")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Similarity at which records are near-duplicates.")
    pii: Literal["keep", "redact", "drop"] = Field(
        "keep", description="What to do with PII: keep, redact ([EMAIL], ...), or drop the record."
    )
    pii_kinds: list[str] = Field(default_factory=lambda: list(PII_KINDS), description="PII kinds to act on.")
    pii_ner: bool = Field(False, description="Also find names and places with the NER backend (Presidio).")
    leak_against: list[str] = Field(
        default_factory=list, description="Eval/test files: drop records whose input also appears there."
    )


@dataclass
class Change:
    file: str
    line: int | None
    record: int
    action: str  # drop, trim, redact
    why: str
    field: str | None = None


@dataclass
class CleanResult:
    input: str
    output: str
    records_in: int
    records_out: int
    changes: list[Change] = field(default_factory=list)
    report_path: str | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.changes:
            out[c.action] = out.get(c.action, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "records_in": self.records_in,
                "records_out": self.records_out, "counts": self.counts(),
                "changes": [asdict(c) for c in self.changes]}  # fmt: skip


def clean(
    path: str,
    output: str | None = None,
    options: CleanOptions | None = None,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    label_column: str | None = None,
) -> CleanResult:
    options = options or CleanOptions()
    out = Path(output) if output else derived_path(path, "clean")
    if out.resolve() == Path(path).resolve():
        raise TunelabError(f"{out}: clean writes a new file; the output must differ from the input")
    ds = load_dataset(path, "train", fmt, columns, label_column)
    if ds.file_error and not ds.items:
        raise TunelabError(ds.file_error)
    changes: list[Change] = []
    keep = [it for it in ds.items if _keep_parsed(it, options, changes)]
    for it in keep:
        _fix_fields(it, options, changes)
        reparse(it, ds.format, columns, ds.label_column)
    keep = [it for it in keep if _keep_fixed(it, options, changes)]
    keep = _drop_leaked(keep, options.leak_against, changes)
    if options.dedup:
        keep = _drop_duplicates(keep, changes)
    if options.near_dedup:
        keep = _drop_near(keep, options.near_threshold, changes)
    write_rows([it.row for it in keep], out)
    changes.sort(key=lambda c: (c.record, c.action != "drop"))
    result = CleanResult(path, str(out), len(ds.items), len(keep), changes)
    report = derived_path(out, "report", ".json")
    report.write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    result.report_path = str(report)
    return result


def _change(it: Item, action: str, why: str, fld: str | None = None) -> Change:
    return Change(it.source, it.line, it.index, action, why, fld)


def _keep_parsed(it: Item, options: CleanOptions, changes: list[Change]) -> bool:
    if it.error is None or (not options.drop_invalid and it.row):
        return True
    changes.append(_change(it, "drop", f"invalid: {it.error}"))
    return False


def _fix_fields(it: Item, options: CleanOptions, changes: list[Change]) -> None:
    for path, text in list(it.fields.items()):
        new = text.strip() if options.trim else text
        if new != text:
            changes.append(_change(it, "trim", "leading/trailing whitespace", path))
        if options.pii == "redact":
            new, found = redact_pii(new, options.pii_kinds, options.pii_ner)
            if found:
                changes.append(_change(it, "redact", "PII: " + ", ".join(f.kind for f in found), path))
        if new != text:
            set_leaf(it.row, path, new)


def _keep_fixed(it: Item, options: CleanOptions, changes: list[Change]) -> bool:
    if it.error is not None and options.drop_invalid:
        changes.append(_change(it, "drop", f"invalid after fixes: {it.error}"))
        return False
    if options.drop_empty and (empty := [p for p, t in it.fields.items() if not t.strip()]):
        changes.append(_change(it, "drop", f"empty text field {', '.join(empty)}", empty[0]))
        return False
    if options.pii == "drop":
        kinds = sorted({f.kind for t in it.fields.values() for f in find_pii(t, options.pii_kinds, options.pii_ner)})
        if kinds:
            changes.append(_change(it, "drop", f"PII: {', '.join(kinds)}"))
            return False
    return True


def _drop_leaked(items: list[Item], against: Sequence[str], changes: list[Change]) -> list[Item]:
    if not against:
        return items
    seen: dict[str, str] = {}
    for path in against:
        for other in load_dataset(path, "test").valid:
            seen.setdefault(text_hash(other.input_text), other.where)
    out = []
    for it in items:
        if (match := seen.get(text_hash(it.input_text))) and it.input_text.strip():
            changes.append(_change(it, "drop", f"leak: same input as {match}"))
        else:
            out.append(it)
    return out


def _drop_duplicates(items: list[Item], changes: list[Change]) -> list[Item]:
    drop: set[int] = set()
    for group in exact_groups(items, lambda it: it.full_text + "\x00" + (it.label or "")):
        for it in group[1:]:
            changes.append(_change(it, "drop", f"duplicate of {group[0].where}"))
            drop.add(id(it))
    return [it for it in items if id(it) not in drop]


def _drop_near(items: list[Item], threshold: float, changes: list[Change]) -> list[Item]:
    pairs = near_pairs([it.full_text for it in items], threshold)
    sims = {(i, j): s for i, j, s in pairs}
    drop: set[int] = set()
    for group in clusters(len(items), pairs):
        first = items[group[0]]
        for k in group[1:]:
            sim = sims.get((group[0], k))
            how = f"similarity {sim}" if sim is not None else "same near-duplicate cluster"
            changes.append(_change(items[k], "drop", f"near-duplicate of {first.where} ({how})"))
            drop.add(k)
    return [it for k, it in enumerate(items) if k not in drop]
