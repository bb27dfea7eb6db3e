"""PII is looked for only in the text a run trains on (through columns: and templates), never in ids or other
columns, and `data clean` changes only those fields and reports every change."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.config import CheckOptions, DatasetConfig
from tunelab.quality.check import check
from tunelab.quality.clean import CleanOptions, clean


def test_clean_redacts_the_text_and_leaves_the_id_alone(tmp_path: Path) -> None:
    rows = [
        {"id": "13728057-1", "ref": "+1 415-555-0132", "text": "call me on +1 415-555-0132 or a@b.io", "label": "x"},
        {"id": "13728057-2", "ref": "none", "text": "  Ms. Jane Roe, 12 Elm Street  ", "label": "y"},
    ]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = clean(str(src), str(tmp_path / "out.jsonl"), CleanOptions(pii="redact"), fmt="labelled")
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == ["13728057-1", "13728057-2"] and out[0]["ref"] == "+1 415-555-0132"
    assert out[0]["text"] == "call me on [PHONE] or [EMAIL]"
    assert out[1]["text"] == "Ms. [NAME], [ADDRESS]"
    report = json.loads(Path(res.report_path or "").read_text())
    assert [(c["line"], c["action"], c["field"], c["why"]) for c in report["changes"]] == [
        (1, "redact", "text", "PII: phone, email"),
        (2, "trim", "text", "leading/trailing whitespace"),
        (2, "redact", "text", "PII: name, address"),
    ]


def test_only_mapped_and_templated_fields_are_scanned(tmp_path: Path) -> None:
    src = tmp_path / "news.tsv"
    src.write_text("ticket\ttitle\tbody\ttopic\n555-123-4567\tCall 555-123-4567\tor write to x@example.com\tsupport\n")
    ds = DatasetConfig(path=str(src), format="labelled", columns={"text": "{title}. {body}", "label": "topic"})
    found = check([ds], options=CheckOptions(near_duplicates=False)).find("pii")  # one problem per kind
    assert sorted((loc["field"], loc["kind"]) for p in found for loc in p.locations) == [("body", "email"),
                                                                                        ("title", "phone")]  # fmt: skip
    plain = DatasetConfig(path=str(src), format="labelled", columns={"text": "body", "label": "topic"})
    [pii] = check([plain], options=CheckOptions(near_duplicates=False)).find("pii")
    assert [loc["field"] for loc in pii.locations] == ["body"]  # title and ticket are not what trains
