"""Label checks and the leakage policy: in `data check`, in the saved card, and in a run before the model loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.conftest import run_cli

from tunelab.config import CheckOptions, DatasetConfig, RunConfig
from tunelab.data.pipeline import load_records
from tunelab.quality.card import data_card, leaked_eval_records, preflight, skip_records
from tunelab.quality.check import check


def tsv(path: Path, rows: list[tuple[str, str]], header: str = "sentence\tsentiment") -> str:
    path.write_text(header + "\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    return str(path)


def labelled(path: str) -> DatasetConfig:
    return DatasetConfig(path=path, format="labelled", columns={"text": "sentence", "label": "sentiment"})


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    train = [(f"great film {i}", "POSITIVE") for i in range(40)] + [(f"awful film {i}", "NEGATIVE") for i in range(30)]
    train += [("not bad at all", "Negative"), ("meh", "neutral")]  # a case variant; a class with one example
    test = [("great film 3", "POSITIVE"), ("superb", "positive "), ("boring", "mixed")]  # leak, variant, unseen
    return tsv(tmp_path / "train.tsv", train), tsv(tmp_path / "test.tsv", test)


def test_label_problems_are_found_each_with_its_records(files: tuple[str, str]) -> None:
    train, test = files
    report = check([labelled(train)], test=[labelled(test)], options=CheckOptions(near_duplicates=False))
    [variant_neg, variant_pos] = sorted(report.find("label_variant"), key=lambda p: p.message)
    assert variant_neg.severity == "error" and "'NEGATIVE' (30), 'Negative' (1)" in variant_neg.message
    assert [loc["label"] for loc in variant_pos.locations] == ["POSITIVE", "positive "]
    [unseen] = report.find("label_unseen")
    assert unseen.severity == "error" and [(loc["line"], loc["label"]) for loc in unseen.locations] == [
        (3, "positive "),
        (4, "mixed"),
    ]
    [rare] = report.find("label_rare")
    assert rare.message.startswith("2 training classes have fewer than 5 examples:")
    assert {loc["label"] for loc in rare.locations} == {"Negative", "neutral"}
    [imbalance] = report.find("label_imbalance")
    assert re.search(r"POSITIVE has 40 examples, (Negative|neutral) 1 \(40x", imbalance.message)


def test_labels_beside_another_format_only_warn(tmp_path: Path) -> None:
    rows = [{"instruction": f"q{i}", "output": "a", "category": c} for i, c in enumerate(["qa", "QA", "qa"])]
    p = tmp_path / "sft.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    [variant] = check([str(p)], options=CheckOptions(near_duplicates=False)).find("label_variant")
    assert variant.severity == "warning"  # a metadata column, not what trains


def test_leakage_policy_error_warn_drop(files: tuple[str, str], tmp_path: Path) -> None:
    train, test = files
    for policy, severity in (("error", "error"), ("warn", "warning"), ("drop", "warning")):
        [leak] = check([labelled(train)], [labelled(test)], options=CheckOptions(leakage=policy)).find("leak_exact")
        assert leak.severity == severity and leak.locations[0]["line"] == 2
    opts = CheckOptions(leakage="drop", near_duplicates=False, min_label_count=1, max_label_imbalance=100)
    cfg = RunConfig.model_validate({"data": {"train": [labelled(train).model_dump()],
                                             "eval": [labelled(test).model_dump()], "check": opts.model_dump()}})  # fmt: skip
    with pytest.raises(Exception, match="label_variant"):  # the label errors still stop it
        preflight(cfg.data.train, cfg.data.eval, options=opts, run_dir=tmp_path / "run")
    left_out = leaked_eval_records(tmp_path / "run" / "data_check.json")
    assert left_out == {test: [0]}
    kept = skip_records(cfg, left_out)
    assert kept.data.eval[0].skip_records == [0]
    assert [rec.text for rec, _ in load_records(kept.data.eval[0])[1]] == ["superb", "boring"]
    card = (tmp_path / "run" / "data_card.md").read_text()
    assert "## Left out (data.check.leakage: drop)" in card and f"| {test}:2 | {train}:5 |" in card
    assert "Left out" not in data_card(check([labelled(train)], [labelled(test)]))  # policy error: nothing dropped


def test_data_check_reads_each_file_with_its_own_mapping(files: tuple[str, str], tmp_path: Path) -> None:
    train, _ = files
    dev = tmp_path / "dev.csv"
    dev.write_text("utterance,intent\ngreat film 3,POSITIVE\nfine,NEGATIVE\n")
    proc = run_cli("data", "check", f"{train}::format=labelled,text=sentence,label=sentiment",
                   "--eval", f"{dev}::format=labelled,text=utterance,label=intent", "--leakage", "warn",
                   "--json", check=False)  # fmt: skip
    report = json.loads(proc.stdout)
    assert [f["format"] for f in report["files"]] == ["labelled", "labelled"]
    codes = {p["code"]: p for p in report["problems"]}
    assert codes["leak_exact"]["severity"] == "warning" and codes["leak_exact"]["locations"][0]["line"] == 2
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data:\n  train: [{{path: {train}, format: labelled, columns: {{text: sentence, label: sentiment}}}}]\n"
        f"  eval: [{{path: {dev}, format: labelled, columns: {{text: utterance, label: intent}}}}]\n"
        "  check: {leakage: drop, near_duplicates: false}\n"
    )
    out = run_cli("data", "check", str(config), check=False).stdout
    assert "left out of the run's eval data (data.check.leakage: drop)" in out
