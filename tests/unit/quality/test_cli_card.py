"""The `data` sub-app verbs, the data card and the training pre-flight."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tests.unit.quality.planted import Planted
from typer.testing import CliRunner

from tunelab.cli.data import data_app
from tunelab.config import DatasetConfig
from tunelab.errors import DataError, TunelabError
from tunelab.quality.card import PreflightError, data_card, preflight
from tunelab.quality.check import check
from tunelab.quality.clean import clean

runner = CliRunner()


def test_check_exit_codes_and_json(planted: Planted, tmp_path: Path) -> None:
    bad = runner.invoke(data_app, ["check", str(planted.train), "--test", str(planted.test), "--json"])
    assert bad.exit_code == 1, bad.output
    data = json.loads(bad.output)
    assert data["ok"] is False and data["summary"]["by_code"]["leak_exact"] == {"problems": 1, "records": 1}
    ok_file = tmp_path / "ok.jsonl"
    ok_file.write_text(json.dumps({"text": "a perfectly fine record"}) + "\n")
    card = tmp_path / "card.md"
    ok = runner.invoke(data_app, ["check", str(ok_file), "--card", str(card), "--report", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert "0 errors, 0 warnings" in ok.output and "## Sources" in card.read_text()
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


def test_clean_split_augment_inspect_verbs(planted: Planted, tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    res = runner.invoke(data_app, ["clean", str(planted.train), "-o", str(out), "--pii", "redact", "--near"])
    assert res.exit_code == 0, res.output
    assert "10 of 15 records kept" in res.output  # the leaked line 13 stays: no --leak-against
    res = runner.invoke(
        data_app, ["split", str(planted.labels), "--out", str(tmp_path / "s"), "--ratios", "0.5,0.25,0.25"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "manifest.json").exists() and (tmp_path / "s" / "train.csv").exists()
    res = runner.invoke(data_app, ["augment", str(planted.labels), "-o", str(tmp_path / "a.csv"), "--method", "swap"])
    assert res.exit_code == 0, res.output
    assert "swap: 7 new records" in res.output  # one per valid row, none a duplicate
    png = tmp_path / "h.png"
    res = runner.invoke(data_app, ["inspect", str(planted.train), "--plot", str(png), "--max-length", "60"])
    assert res.exit_code == 0, res.output
    assert (
        "15 records (2 invalid)" in res.output and "longer than 60: 5" in res.output
    )  # lines 3, 4, 7, 10, 13 and png.exists()


def test_cli_user_errors_raise_tunelab_errors(planted: Planted, tmp_path: Path) -> None:
    res = runner.invoke(data_app, ["split", str(planted.labels), "--out", str(tmp_path), "--ratios", "0.5,0.5"])
    assert isinstance(res.exception, TunelabError) and "three numbers" in str(res.exception)
    res = runner.invoke(data_app, ["clean", str(planted.train), "--pii", "hide"])
    assert isinstance(res.exception, TunelabError) and "keep, redact or drop" in str(res.exception)


def test_help_shows_examples() -> None:
    res = runner.invoke(data_app, ["check", "--help"])
    assert res.exit_code == 0 and "tunelab data check train.jsonl --eval val.jsonl" in res.output


def test_data_card_has_sources_hashes_checks_and_cleaning(planted: Planted, tmp_path: Path) -> None:
    report = check([str(planted.train)], test=[str(planted.test)])
    cleaned = clean(str(planted.train), str(tmp_path / "c.jsonl"))
    md = data_card(report, clean_results=[cleaned.to_dict()])
    assert report.files[0]["sha256"] in md and "| leak_exact | 1 | 1 |" in md.replace("error | ", "")
    assert "## Cleaning" in md and "| 15 | 11 | drop 4, trim 2 |" in md
    assert "errors" in md and "(failed)." in md


def test_preflight_stops_on_errors_and_saves_warnings(planted: Planted, tmp_path: Path, caplog) -> None:
    run = tmp_path / "run"
    with pytest.raises(PreflightError) as info:
        preflight([DatasetConfig(path=str(planted.train))], test=[str(planted.test)], run_dir=run)
    assert isinstance(info.value, DataError) and "leak_exact" in str(info.value) and "schema" in str(info.value)
    assert json.loads((run / "data_check.json").read_text())["ok"] is False
    assert (run / "data_card.md").exists()
    # Only warnings: the run proceeds, warnings are logged and saved.
    cleaned = clean(str(planted.labels), str(tmp_path / "l.csv"))
    with caplog.at_level(logging.WARNING, logger="tunelab.quality.card"):
        report = preflight([cleaned.output], run_dir=tmp_path / "run2")
    assert report.exit_code == 0 and report.find("label_conflict")
    assert any("label" in r.getMessage() for r in caplog.records)
    saved = json.loads((tmp_path / "run2" / "data_check.json").read_text())
    assert saved["summary"]["warning"] >= 1
