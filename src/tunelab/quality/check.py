"""`tunelab data check`: inspect plus problems with a severity, over train/eval/test files together.

What counts as what (see `SEVERITY`): a schema error, an unreadable file, a training example whose input
is also in an eval/test file (exact leakage), and a secret (API key, private key) are errors; duplicates,
near leakage, PII, conflicting labels, empty fields and missing labels are warnings; near-duplicates
inside a split and over-long records are info. Duplicates compare the whole record (plus its label);
leakage and label conflicts compare the input side only, because the same question in train and test
leaks even when the answers differ. Every problem carries the lines of every record involved; a file's bad
records are one `schema` problem (with the likely mapping when a required field is missing everywhere).
`data.check.leakage` makes exact leakage a warning (`drop`: the run leaves those eval records out, `warn`).
Label checks (case variants, eval labels unseen in train, rare classes, imbalance) are in quality.labels.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tunelab.config import CheckOptions, DatasetConfig, ModelConfig
from tunelab.data.hints import mapping_hint
from tunelab.data.sources import MAX_RECORD_BYTES, ReadOptions
from tunelab.quality.dedup import exact_groups, near_groups
from tunelab.quality.inspect import empty_fields, inspect_dataset, public
from tunelab.quality.io import sha256_file
from tunelab.quality.items import Dataset, Item, TextView, load_dataset, text_hash
from tunelab.quality.labels import label_problems
from tunelab.quality.pii import find_pii
from tunelab.quality.report import CheckReport, Problem

ROLES = ("train", "eval", "test")
SEVERITY = {
    "file_error": "error", "schema": "error", "leak_exact": "error", "secret": "error",
    "duplicate": "warning", "leak_near": "warning", "pii": "warning", "label_conflict": "warning",
    "empty_field": "warning", "missing_label": "warning", "near_duplicate": "info", "truncated": "info",
}  # fmt: skip

DataInput = str | DatasetConfig


def check(
    train: Sequence[DataInput],
    eval: Sequence[DataInput] = (),
    test: Sequence[DataInput] = (),
    options: CheckOptions | None = None,
    tokenizer: Any = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> CheckReport:
    """Load the files and check them together; `tokenizer` overrides `options.tokenizer`; records over
    `max_record_bytes` are schema errors, never parsed."""
    options = options or CheckOptions()
    given = {"train": train, "eval": eval, "test": test}
    datasets = [load(d, role, options, max_record_bytes) for role in ROLES for d in given[role]]
    if tokenizer is None and options.tokenizer:
        from tunelab.models.load import load_tokenizer

        tokenizer = load_tokenizer(ModelConfig(name_or_path=options.tokenizer))
    return check_datasets(datasets, options, tokenizer)


def load(d: DataInput, role: str, options: CheckOptions, max_record_bytes: int = MAX_RECORD_BYTES) -> Dataset:
    if isinstance(d, str):
        return load_dataset(d, role, label_column=options.label_column, max_record_bytes=max_record_bytes, lean=True)
    ds = load_dataset(d.path, role, d.format, d.columns, options.label_column, d.split, d.max_samples,
                      max_record_bytes, ReadOptions.of(d), lean=True)  # fmt: skip
    if d.skip_records:  # left out of the run (data.check.leakage: drop, or by hand): not checked either
        skip = set(d.skip_records)
        ds.items = [it for it in ds.items if it.index not in skip]
    return ds


def check_datasets(datasets: list[Dataset], options: CheckOptions, tokenizer: Any = None) -> CheckReport:
    start = time.perf_counter()
    stats = [inspect_dataset(ds, tokenizer, options.max_length) for ds in datasets]
    for ds, st in zip(datasets, stats, strict=True):
        st["sha256"] = sha256_file(ds.path) if Path(ds.path).is_file() else None
    problems: list[Problem] = []
    for ds, st in zip(datasets, stats, strict=False):
        problems += file_problems(ds, st, options)
    valid = [(ds, it) for ds in datasets for it in ds.valid]
    problems += duplicate_problems(valid)
    problems += apply_leakage_policy(leak_problems(valid), options.leakage)
    problems += conflict_problems(valid)
    problems += label_problems(valid, options)
    if options.near_duplicates:
        problems += near_problems(valid, options.near_threshold, options.workers, options.backend)
    report = CheckReport([public(s) for s in stats], problems, options.model_dump(), strict=options.strict)
    report.seconds = time.perf_counter() - start
    return report


def _problem(code: str, message: str, locations: list[dict[str, Any]]) -> Problem:
    return Problem(SEVERITY[code], code, message, locations)


def file_problems(ds: Dataset, st: dict[str, Any], options: CheckOptions) -> list[Problem]:
    out = []
    if ds.file_error:
        out.append(_problem("file_error", ds.file_error, [{"file": ds.path, "line": None, "record": None}]))
    if bad := [it for it in ds.items if it.error and ds.format]:  # no format: the file error says why
        out.append(schema_problem(ds, bad))
    if empty := empty_fields(ds.items):
        locs = [{**it.location(), "field": f} for it, f in empty]
        out.append(_problem("empty_field", f"{len(locs)} empty or whitespace-only text fields in {ds.path}", locs))
    if st.get("missing_labels"):
        locs = [it.location() for it in ds.valid if it.label is None]
        out.append(_problem("missing_label", f"{len(locs)} records without a {ds.label_column!r} in {ds.path}", locs))
    if st.get("truncated"):
        n, unit = len(st["truncated"]), st["length_unit"]
        out.append(_problem("truncated", f"{n} records longer than {options.max_length} {unit}", st["truncated"]))
    if options.pii:
        out += pii_problems(ds, options.pii_kinds, options.pii_ner)
    return out


def schema_problem(ds: Dataset, bad: list[Item]) -> Problem:
    """All bad records of a file as one problem (a file in the wrong format is one finding, not one per row),
    with the likely format or `columns:` mapping when a required field is missing from every record."""
    hint = ""
    if ds.format and len(bad) == len(ds.items) and "missing required field" in (bad[0].error or ""):
        hint = mapping_hint(ds.format, bad[0].row)
    msg = f"{len(bad)} of {len(ds.items)} records of {ds.path} are invalid{hint}; first: {bad[0].error}"
    return _problem("schema", msg, [{**it.location(), "error": it.error} for it in bad])


def apply_leakage_policy(problems: list[Problem], policy: str) -> list[Problem]:
    """data.check.leakage: exact leakage is an error, or a warning whose records are dropped (drop) or kept (warn)."""
    if policy == "error":
        return problems
    what = "left out of the run's eval data (data.check.leakage: drop)" if policy == "drop" else "kept (leakage: warn)"
    return [Problem("warning", p.code, f"{p.message}; {what}", p.locations) for p in problems]


def pii_problems(ds: Dataset, kinds: Sequence[str], ner: bool = False) -> list[Problem]:
    """One problem per PII kind per file, with a location for every finding."""
    found: dict[str, list[dict[str, Any]]] = {}
    for it in ds.items:
        for path, text in it.fields.items():
            for f in find_pii(text, kinds, ner):
                found.setdefault(f.kind, []).append({**it.location(), "field": path, "kind": f.kind})
    out = []
    for kind, locs in found.items():
        code = "secret" if kind == "secret" else "pii"
        records = len({loc["record"] for loc in locs})
        out.append(_problem(code, f"{len(locs)} {kind} finding(s) in {records} record(s) of {ds.path}", locs))
    return out


def _dup_key(it: Item) -> str:
    return it.full_text + ("\x00" + it.label if it.label is not None else "")


def duplicate_problems(valid: list[tuple[Dataset, Item]]) -> list[Problem]:
    """Exact duplicates (normalized text and label) within each role; clean keeps the first."""
    out = []
    for role in ROLES:
        items = [it for ds, it in valid if ds.role == role]
        for group in exact_groups(items, _dup_key):
            msg = f"{len(group)} identical {role} records ({len(group) - 1} redundant), first {group[0].where}"
            out.append(_problem("duplicate", msg, [it.location() for it in group]))
    return out


def leak_problems(valid: list[tuple[Dataset, Item]]) -> list[Problem]:
    """Records of a later role (eval, test) whose input also appears in an earlier role (train, eval)."""
    index: dict[str, dict[str, Item]] = {role: {} for role in ROLES}
    for ds, it in valid:
        if it.input_text.strip():
            index[ds.role].setdefault(text_hash(it.input_text), it)
    out = []
    for i, early in enumerate(ROLES):
        for late in ROLES[i + 1 :]:
            locs = [
                {**it.location(), "matches": index[early][h].where}
                for ds, it in valid
                if ds.role == late and (h := text_hash(it.input_text)) in index[early] and it.input_text.strip()
            ]
            if locs:
                msg = f"{len(locs)} {late} records have the same input as a {early} record"
                out.append(_problem("leak_exact", msg, locs))
    return out


def conflict_problems(valid: list[tuple[Dataset, Item]]) -> list[Problem]:
    """The same input with different labels (within a role)."""
    out = []
    for role in ROLES:
        items = [it for ds, it in valid if ds.role == role and it.label is not None]
        for group in exact_groups(items, lambda it: it.input_text):
            labels = sorted({it.label for it in group if it.label is not None})
            if len(labels) > 1:
                locs = [{**it.location(), "label": it.label} for it in group]
                msg = f"the same {role} input has labels {', '.join(labels)}; first {group[0].where}"
                out.append(_problem("label_conflict", msg, locs))
    return out


def near_problems(
    valid: list[tuple[Dataset, Item]], threshold: float, workers: int = 1, backend: str = "local"
) -> list[Problem]:
    """Near-duplicates within a role compare whole records (what clean would drop); near leakage across roles
    compares inputs, like exact leakage. Each record is listed once, with its most similar earlier record (in its
    own split for a near-duplicate, in an earlier split for leakage): a cluster of k near copies is k lines, not
    the k*k pairs. One MinHash pass serves both when inputs are the records. The texts are read as the pass
    needs them (`TextView`), never all held at once."""
    items = [it for _, it in valid]
    full = near_groups(TextView(items, "full_text"), threshold, workers=workers, backend=backend)
    same_text = all(it.input_text == it.full_text for it in items)
    inputs = (
        full if same_text else near_groups(TextView(items, "input_text"), threshold, workers=workers, backend=backend)
    )
    start, at = [0] * len(valid), 0  # where each record's role starts: records come role by role (ROLES order)
    for k in range(1, len(valid)):
        at = at if valid[k][0].role == valid[k - 1][0].role else k
        start[k] = at
    inside = _nearest_earlier(full, lambda y: (start[y], y))
    leaks: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for y, (sim, x) in sorted(_nearest_earlier(inputs, lambda y: (0, start[y])).items()):
        loc = {**valid[y][1].location(), "near": valid[x][1].where, "similarity": sim}
        leaks.setdefault((valid[x][0].role, valid[y][0].role), []).append(loc)
    out = []
    if inside:
        locs = [{**valid[y][1].location(), "near": valid[x][1].where, "similarity": sim}
                for y, (sim, x) in sorted(inside.items())]  # fmt: skip
        msg = f"{len(locs)} records are near-duplicates (similarity >= {threshold}) of an earlier record of their split"
        out.append(_problem("near_duplicate", msg, locs))
    for (early, late), locs in leaks.items():
        msg = f"{len(locs)} {late} records are near-duplicates of {early} records (similarity >= {threshold})"
        out.append(_problem("leak_near", msg, locs))
    return out


def _nearest_earlier(
    groups: list[tuple[Sequence[int], Sequence[int], float]], window: Callable[[int], tuple[int, int]]
) -> dict[int, tuple[float, int]]:
    """Record y -> (similarity, x): its most similar partner x (the first, on ties) with lo <= x < hi for
    (lo, hi) = window(y). Groups hold ascending indices, so the candidate is found by bisection: big groups of
    exact copies cost a log, not a product."""
    best: dict[int, tuple[float, int]] = {}
    for ga, gb, sim in groups:
        for mine, other in ((ga, gb), (gb, ga)):
            for y in mine:
                lo, hi = window(y)
                k = bisect_left(other, lo)
                if k == len(other) or (x := other[k]) >= hi:
                    continue
                old = best.get(y)
                if old is None or (sim, -x) > (old[0], -old[1]):
                    best[y] = (sim, x)
    return best
