"""Label checks for `tunelab data check` and the pre-flight before training.

- `label_variant`: labels that differ only by case or whitespace (`NEGATIVE`, `Negative`, ` negative`): a
  classification head would learn them as separate classes, so for labelled data it is an error.
- `label_unseen`: eval/test labels that no training record has: the head can never predict them (an error for
  labelled data, where the label is what trains; a warning for a label column beside other formats).
- `label_rare`: training classes with fewer than `min_label_count` examples; `label_imbalance`: the largest
  training class has more than `max_label_imbalance` times the examples of the smallest (warnings).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tunelab.config import CheckOptions
from tunelab.quality.items import Dataset, Item
from tunelab.quality.report import Problem

CODES = {"label_variant": "error", "label_unseen": "error", "label_rare": "warning", "label_imbalance": "warning"}


def _severity(code: str, trains: bool) -> str:
    return CODES[code] if trains else "warning"


def label_key(label: str) -> str:
    return re.sub(r"\s+", " ", label).strip().casefold()


def label_problems(valid: list[tuple[Dataset, Item]], options: CheckOptions) -> list[Problem]:
    labelled = [(ds, it) for ds, it in valid if it.label is not None]
    if not labelled:
        return []
    trains = any(ds.format == "labelled" for ds, _ in labelled)  # the label is what a head learns
    return [*_variants(labelled, trains), *_unseen(labelled, trains), *_counts(labelled, options)]


def _variants(labelled: list[tuple[Dataset, Item]], trains: bool) -> list[Problem]:
    spellings: dict[str, dict[str, list[Item]]] = {}
    for _, it in labelled:
        assert it.label is not None
        spellings.setdefault(label_key(it.label), {}).setdefault(it.label, []).append(it)
    out = []
    for forms in spellings.values():
        if len(forms) > 1:
            names = ", ".join(f"{lab!r} ({len(items)})" for lab, items in forms.items())
            locs = [{**items[0].location(), "label": lab} for lab, items in forms.items()]
            msg = (f"labels {names} differ only by case or whitespace: a classifier would learn them as "
                   f"{len(forms)} classes; make them one")  # fmt: skip
            out.append(Problem(_severity("label_variant", trains), "label_variant", msg, locs))
    return out


def _unseen(labelled: list[tuple[Dataset, Item]], trains: bool) -> list[Problem]:
    seen = {it.label for ds, it in labelled if ds.role == "train"}
    if not seen:
        return []
    missing: dict[str, list[dict[str, Any]]] = {}
    for ds, it in labelled:
        if ds.role != "train" and it.label not in seen:
            missing.setdefault(ds.path, []).append({**it.location(), "label": it.label})
    out = []
    for path, locs in missing.items():
        names = sorted({str(loc["label"]) for loc in locs})
        msg = (f"{len(locs)} records of {path} have labels no training record has ({', '.join(names[:10])}"
               f"{', ...' if len(names) > 10 else ''}): a classifier can never predict them")  # fmt: skip
        out.append(Problem(_severity("label_unseen", trains), "label_unseen", msg, locs))
    return out


def _counts(labelled: list[tuple[Dataset, Item]], options: CheckOptions) -> list[Problem]:
    counts = Counter(it.label for ds, it in labelled if ds.role == "train")
    if len(counts) < 2:
        return []
    out = []
    rare = {lab: n for lab, n in counts.items() if n < options.min_label_count}
    if rare:
        first = {it.label: it for ds, it in labelled if ds.role == "train" and it.label in rare}
        msg = (f"{len(rare)} training classes have fewer than {options.min_label_count} examples: "
               + ", ".join(f"{lab} ({n})" for lab, n in sorted(rare.items(), key=lambda x: x[1])[:10]))  # fmt: skip
        locs = [{**it.location(), "label": lab, "count": rare[lab]} for lab, it in first.items()]
        out.append(Problem(CODES["label_rare"], "label_rare", msg, locs))
    (top, n_top), (low, n_low) = counts.most_common()[0], counts.most_common()[-1]
    if n_top > options.max_label_imbalance * n_low:
        msg = (
            f"training classes are imbalanced: {top} has {n_top} examples, {low} {n_low} "
            f"({n_top / n_low:.0f}x, above data.check.max_label_imbalance {options.max_label_imbalance:g})"
        )
        out.append(Problem(CODES["label_imbalance"], "label_imbalance", msg, []))
    return out
