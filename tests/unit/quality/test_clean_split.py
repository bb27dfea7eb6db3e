"""clean and split remove the planted problems, never touch the input, and report what they did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.quality.planted import Planted

from tunelab.config import CheckOptions
from tunelab.errors import TunelabError
from tunelab.quality.check import check
from tunelab.quality.clean import CleanOptions, clean
from tunelab.quality.items import load_dataset, normalize
from tunelab.quality.split import SplitOptions, split


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_clean_removes_planted_problems_and_reports_each_change(planted: Planted, tmp_path: Path) -> None:
    before = planted.train.read_bytes()
    opts = CleanOptions(near_dedup=True, pii="redact", leak_against=[str(planted.test)])
    result = clean(str(planted.train), str(tmp_path / "out.jsonl"), opts)
    assert planted.train.read_bytes() == before  # input untouched
    drops = {c.line: c.why for c in result.changes if c.action == "drop"}
    assert sorted(drops) == [2, 4, 5, 6, 13, 14]
    assert drops[2].startswith("duplicate of") and drops[2].endswith(":1")
    assert drops[4].startswith("near-duplicate of") and ":3 (similarity" in drops[4]
    assert drops[5].startswith("invalid") and "invalid JSON" in drops[5]
    assert drops[13].startswith("leak: same input as") and drops[13].endswith("test.jsonl:2")
    assert drops[14].startswith("empty text field output")
    redacted = {c.line: c.why for c in result.changes if c.action == "redact"}
    assert redacted == {
        7: "PII: email",
        8: "PII: phone",
        9: "PII: card",
        10: "PII: iban",
        11: "PII: ip",
        12: "PII: secret",
    }
    trims = [(c.line, c.field) for c in result.changes if c.action == "trim"]
    assert trims == [(2, "instruction"), (14, "output")]  # reported even though both rows are dropped later
    assert result.records_in == 15 and result.records_out == 9
    rows = _rows(Path(result.output))
    assert len(rows) == 9 and rows[5]["instruction"] == "Send it to IBAN [IBAN] please"
    report = json.loads(Path(result.report_path).read_text())
    assert report["counts"] == {"drop": 6, "redact": 6, "trim": 2}
    # the cleaned file passes check with only the warnings-free result
    after = check([result.output], test=[str(planted.test)])
    assert after.exit_code == 0
    assert not after.find("duplicate") and not after.find("near_duplicate") and not after.find("pii")


def test_clean_drop_pii_and_refuses_to_overwrite(planted: Planted, tmp_path: Path) -> None:
    result = clean(str(planted.train), str(tmp_path / "o.jsonl"), CleanOptions(pii="drop", pii_kinds=["email", "card"]))
    assert {c.line: c.why for c in result.changes if c.why.startswith("PII")} == {
        7: "PII: email",
        9: "PII: card",
    }
    with pytest.raises(TunelabError, match="must differ from the input"):
        clean(str(planted.train), str(planted.train))


def test_clean_csv_keeps_columns(planted: Planted, tmp_path: Path) -> None:
    result = clean(str(planted.labels), str(tmp_path / "c.csv"))
    text = Path(result.output).read_text()
    assert text.splitlines()[0] == "text,category"
    dropped = {c.line for c in result.changes if c.action == "drop"}
    assert dropped == {6}  # duplicate; the label conflict is reported by check, not resolved by guessing
    assert result.records_out == 6


def _grouped_rows(tmp_path: Path) -> Path:
    rows = []
    for i in range(60):
        label = ["a", "b", "c"][i % 3]
        rows.append(
            {
                "text": f"unique request {i} about topic {label} with words {i * 7919 % 1000}",
                "label": label,
                "user": f"u{i}",
            }
        )
    for k in range(4):  # one customer's records, all different texts
        rows.append({"text": f"customer x says thing {k} loudly", "label": "a", "user": "x"})
    base = "please help me reset the password on my online banking account today"
    rows += [{"text": base, "label": "b", "user": "y1"}, {"text": base + "!", "label": "b", "user": "y2"}]
    path = tmp_path / "all.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_split_is_deterministic_stratified_and_grouped(tmp_path: Path) -> None:
    path = _grouped_rows(tmp_path)
    m1 = split([str(path)], str(tmp_path / "s1"), SplitOptions(group_by="user", seed=3))
    m2 = split([str(path)], str(tmp_path / "s2"), SplitOptions(group_by="user", seed=3))
    assert {k: v["sha256"] for k, v in m1["splits"].items()} == {k: v["sha256"] for k, v in m2["splits"].items()}
    counts = {k: v["records"] for k, v in m1["splits"].items()}
    assert sum(counts.values()) == 66 and 42 <= counts["train"] <= 50 and counts["test"] >= 8
    for name in ("train", "validation", "test"):  # every label in every split
        assert set(m1["splits"][name]["labels"]) == {"a", "b", "c"}
    where = {}
    for name, info in m1["splits"].items():
        for r in _rows(Path(info["path"])):
            where.setdefault(r["user"], set()).add(name)
            where.setdefault(normalize(r["text"]).rstrip("!"), set()).add(name)
    assert len(where["x"]) == 1  # the customer's four records stay together
    assert len(where[normalize("please help me reset the password on my online banking account today")]) == 1
    manifest = json.loads((tmp_path / "s1" / "manifest.json").read_text())
    assert manifest["inputs"][0]["records"] == 66 and len(manifest["inputs"][0]["sha256"]) == 64
    assert manifest["multi_record_groups"] == 2
    s = m1["splits"]
    report = check([s["train"]["path"]], eval=[s["validation"]["path"]], test=[s["test"]["path"]])
    assert not report.find("leak_exact") and not report.find("leak_near")


def test_split_keeps_planted_leak_and_near_duplicates_together(planted: Planted, tmp_path: Path) -> None:
    # train + test together, re-split: the leaked pair and the near-duplicates must land in one split each
    manifest = split([str(planted.train), str(planted.test)], str(tmp_path / "s"), SplitOptions(seed=1))
    assert manifest["inputs"][0]["skipped_invalid"] == 2  # lines 5 and 6
    files = {k: v["path"] for k, v in manifest["splits"].items()}
    report = check([files["train"]], eval=[files["validation"]], test=[files["test"]], options=CheckOptions(pii=False))
    assert not report.find("leak_exact") and not report.find("leak_near")
    assert sum(len(load_dataset(p).items) for p in files.values()) == 16


def test_split_rejects_bad_ratios() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        SplitOptions(ratios=(0.5, 0.2, 0.2))
