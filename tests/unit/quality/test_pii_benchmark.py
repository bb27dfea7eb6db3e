"""The PII benchmark (tests/data/pii_benchmark.jsonl, written by tests/data/make_pii_benchmark.py): labelled
positives of every kind and hard negatives (arithmetic, thousands separators, dates, versions, coordinates, digits
in URLs, ids, ...). Precision and recall per kind are computed here and must equal the table in
docs/data-quality.md; `TUNELAB_PII_TABLE=1 pytest tests/unit/quality/test_pii_benchmark.py` rewrites that table.
A finding counts when it has the labelled kind and overlaps the labelled span.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from tests.conftest import REPO

from tunelab.quality import pii
from tunelab.quality.pii import PII_KINDS, find_pii
from tunelab.quality.pii_ner import unavailable

BENCH = REPO / "tests" / "data" / "pii_benchmark.jsonl"
DOC = REPO / "docs" / "data-quality.md"
BEGIN, END = "<!-- pii-benchmark -->", "<!-- /pii-benchmark -->"


def rows() -> list[dict]:
    return [json.loads(line) for line in BENCH.read_text(encoding="utf-8").splitlines() if line.strip()]


def score(ner: bool = False) -> tuple[dict[str, Counter], Counter]:
    """Per kind: tp, fp, fn; and false positives per hard-negative category."""
    per: dict[str, Counter] = {k: Counter() for k in PII_KINDS}
    negatives: Counter = Counter()
    for r in rows():
        text = r["text"]
        expected = [(e["kind"], text.index(e["text"]), text.index(e["text"]) + len(e["text"])) for e in r["pii"]]
        matched: set[int] = set()
        for f in find_pii(text, ner=ner):
            hit = next((i for i, (k, s, e) in enumerate(expected)
                        if k == f.kind and s < f.end and f.start < e and i not in matched), None)  # fmt: skip
            if hit is None:
                per[f.kind]["fp"] += 1
                negatives[r["note"]] += not r["pii"]
            else:
                matched.add(hit)
                per[f.kind]["tp"] += 1
        for i, (k, _, _) in enumerate(expected):
            per[k]["fn"] += i not in matched
    return per, negatives


def table(per: dict[str, Counter], negatives: Counter) -> str:
    data = rows()
    n_neg = sum(1 for r in data if not r["pii"])
    lines = [f"{sum(len(r['pii']) for r in data)} labelled PII spans in {len(data) - n_neg} sentences, and {n_neg} hard "
             "negatives (sentences with no PII); rules only (no NER backend):", "",
             "| kind | labelled | found | false positives | precision | recall |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for kind, c in per.items():
        found, labelled = c["tp"] + c["fp"], c["tp"] + c["fn"]
        precision = f"{c['tp'] / found:.2f}" if found else "-"
        lines.append(f"| {kind} | {labelled} | {c['tp']} | {c['fp']} | {precision} | {c['tp'] / labelled:.2f} |")
    cats = Counter(r["note"] for r in data if not r["pii"])
    flagged = ", ".join(f"{cat} {negatives[cat]} of {n}" for cat, n in cats.items() if negatives[cat])
    lines += ["", f"Hard negatives flagged: {sum(negatives.values())} of {n_neg} ({flagged or 'none'}); categories: "
              + ", ".join(f"{cat} ({n})" for cat, n in cats.items()) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def test_benchmark_covers_every_kind_and_hard_negatives() -> None:
    data = rows()
    kinds = Counter(e["kind"] for r in data for e in r["pii"])
    assert sum(kinds.values()) >= 150 and set(kinds) == set(PII_KINDS) and min(kinds.values()) >= 10
    negatives = [r for r in data if not r["pii"]]
    assert len(negatives) >= 150
    for needed in ("arithmetic", "thousands separators", "dates", "versions", "coordinates", "digits inside URLs"):
        assert sum(r["note"] == needed for r in negatives) >= 8, needed
    for r in data:  # every labelled span is in its sentence
        assert all(e["text"] in r["text"] for e in r["pii"]), r


def test_benchmark_figures_are_the_documented_ones() -> None:
    text = DOC.read_text(encoding="utf-8")
    got = table(*score())
    if os.environ.get("TUNELAB_PII_TABLE"):
        head, rest = text.split(BEGIN)
        DOC.write_text(f"{head}{BEGIN}\n{got}{END}{rest.split(END, 1)[1]}", encoding="utf-8")
        text = DOC.read_text(encoding="utf-8")
    documented = text.split(BEGIN)[1].split(END)[0].strip()
    assert documented == got.strip(), "docs/data-quality.md disagrees: rerun with TUNELAB_PII_TABLE=1"


def test_hard_negatives_named_in_the_issue_are_not_pii() -> None:
    for text in ("100-50-30-15 = 5", "14,000-3,920-1,000", "id 13728057-1", "at 40.7128, -74.0060",
                 "https://example.com/item/4111111111111111", "v1.2.3.4", "2023-10-05"):  # fmt: skip
        assert find_pii(text) == [], text


@pytest.mark.skipif(unavailable() is not None, reason=f"NER backend unavailable offline: {unavailable()}")
def test_ner_backend_finds_names_the_rules_miss() -> None:
    per, _ = score(ner=True)
    rules, _ = score()
    assert per["name"]["tp"] > rules["name"]["tp"]


def test_gates_never_hide_what_the_detectors_find(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kind's cheap gate skips its detector on text that cannot hold the kind; on every benchmark sentence
    (PII and hard negatives, every kind) the findings must be those of the detectors run on everything."""
    texts = [r["text"] for r in rows()]
    texts += [t.lower() for t in texts] + [t.upper() for t in texts]  # gates that test case must still pass these
    gated = [find_pii(t) for t in texts]
    monkeypatch.setattr(pii, "_GATES", {})
    assert gated == [find_pii(t) for t in texts]
    assert sum(map(len, gated)) > len(rows())  # the texts hold findings of every kind, and the gates let them through
