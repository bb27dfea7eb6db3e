"""`tunelab data split`: deterministic train/validation/test splits that do not leak.

Records are first joined into groups that must stay together: the same value of the `group_by` field
(one customer's records), the same input after normalizing, and near-duplicate clusters (MinHash/LSH over
the input side). Groups, never single records, are then assigned to splits. With a label, each group
goes to the stratum of its most common label, and within a stratum the groups (shuffled with the seed,
larger groups first) go one by one to the split furthest below its target share, so each label keeps
the ratios as closely as whole groups allow. The same inputs and seed give the same files byte for byte.
The manifest records sha256 hashes and counts of inputs and outputs.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.errors import TunelabError
from tunelab.quality.dedup import clusters, near_pairs
from tunelab.quality.io import sha256_file, write_rows
from tunelab.quality.items import Item, load_dataset, normalize

SPLITS = ("train", "validation", "test")


class SplitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    ratios: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="Train, validation, test shares.")
    seed: int = Field(0, description="Seed for the assignment of groups to splits.")
    stratify: bool = Field(True, description="Keep each label's share in every split (when there is a label).")
    group_by: str | None = Field(None, description="Field whose equal values must stay in one split (e.g. user_id).")
    near_threshold: float | None = Field(
        0.85,
        gt=0,
        le=1,
        description="Keep near-duplicate inputs together at this similarity; null: exact only.",
    )
    label_column: str | None = Field(None, description="Label column; default: detected (label, category, ...).")
    suffix: str | None = Field(None, description="Output file type (.jsonl, .csv, ...); default: the input's.")

    @field_validator("ratios")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1) > 1e-6:
            raise ValueError(f"ratios must be non-negative and sum to 1, got {v}")
        return v


def split(
    paths: list[str],
    out_dir: str,
    options: SplitOptions | None = None,
    fmt: str = "auto",
    columns: Any = None,
) -> dict[str, Any]:
    """Split the records of `paths` into `out_dir`; returns the manifest (also saved as manifest.json)."""
    options = options or SplitOptions()
    datasets = [load_dataset(p, "train", fmt, columns, options.label_column) for p in paths]
    items = [it for ds in datasets for it in ds.valid]
    if not items:
        raise TunelabError(f"{', '.join(paths)}: no valid records to split")
    groups = group_items(items, options)
    assignment = assign(groups, items, options)
    out = Path(out_dir)
    suffix = options.suffix or Path(paths[0]).suffix or ".jsonl"
    manifest: dict[str, Any] = {
        "inputs": [_input_entry(ds) for ds in datasets],
        "options": options.model_dump(mode="json"),
        "groups": len(groups),
        "multi_record_groups": sum(1 for g in groups if len(g) > 1),
        "splits": {},
    }
    for k, name in enumerate(SPLITS):
        members = sorted(i for g, s in zip(groups, assignment, strict=True) if s == k for i in g)
        if options.ratios[k] == 0 and not members:
            continue
        path = write_rows([items[i].row for i in members], out / f"{name}{suffix}")
        labels = Counter(items[i].label for i in members if items[i].label is not None)
        manifest["splits"][name] = {
            "path": str(path), "sha256": sha256_file(path), "records": len(members),
            "groups": sum(1 for s in assignment if s == k), "labels": dict(sorted(labels.items())),
        }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _input_entry(ds: Any) -> dict[str, Any]:
    skipped = [it.where for it in ds.items if it.error]
    p = Path(ds.path)
    return {"path": ds.path, "sha256": sha256_file(p) if p.is_file() else None, "records": len(ds.items),
            "skipped_invalid": len(skipped), "skipped_at": skipped}  # fmt: skip


def group_items(items: list[Item], options: SplitOptions) -> list[list[int]]:
    """Indices of records that must share a split: same group key, same input, near-duplicate inputs."""
    edges: list[tuple[int, int]] = []
    first: dict[tuple[str, str], int] = {}
    for i, it in enumerate(items):
        keys = [("input", normalize(it.input_text))]
        if options.group_by:
            if options.group_by not in it.row:
                raise TunelabError(f"{it.where}: group_by field {options.group_by!r} is missing from the record")
            keys.append(("group", json.dumps(it.row[options.group_by], sort_keys=True)))
        for key in keys:
            edges.append((first.setdefault(key, i), i))
    if options.near_threshold is not None:
        edges += [(i, j) for i, j, _ in near_pairs([it.input_text for it in items], options.near_threshold)]
    together = clusters(len(items), edges)
    grouped = {i for g in together for i in g}
    return sorted(together + [[i] for i in range(len(items)) if i not in grouped])


def assign(groups: list[list[int]], items: list[Item], options: SplitOptions) -> list[int]:
    """Split index (0 train, 1 validation, 2 test) per group."""
    rng = random.Random(options.seed)
    strata: dict[str, list[int]] = {}
    for g, members in enumerate(groups):
        labels = Counter(items[i].label or "" for i in members) if options.stratify else Counter({"": 1})
        top = sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        strata.setdefault(top, []).append(g)
    result = [0] * len(groups)
    for name in sorted(strata):
        order = strata[name]
        rng.shuffle(order)
        order.sort(key=lambda g: -len(groups[g]))  # stable: shuffled order among equal sizes
        total = sum(len(groups[g]) for g in order)
        filled = [0, 0, 0]
        for g in order:
            deficit = [options.ratios[k] * total - filled[k] for k in range(3)]
            k = max(range(3), key=lambda k: (deficit[k], -k))
            result[g] = k
            filled[k] += len(groups[g])
    return result
