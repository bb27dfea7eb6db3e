"""check/inspect on planted problems: each is found, at the right line, with the right count and severity."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tests.conftest import shared_path
from tests.unit.quality.planted import Planted

from tunelab.config import CheckOptions, DatasetConfig
from tunelab.models.presets import byte_tokenizer
from tunelab.quality.check import check
from tunelab.quality.inspect import inspect_dataset, plot_lengths
from tunelab.quality.items import load_dataset


def _lines(problems) -> list:
    return sorted(loc["line"] for p in problems for loc in p.locations)


def test_planted_problems_are_found_at_their_lines(planted: Planted) -> None:
    report = check([str(planted.train)], test=[str(planted.test)])
    [schema] = report.find("schema")  # every bad record of a file is one problem, each with its own error
    assert schema.lines() == [5, 6] and schema.message.startswith(f"2 of 15 records of {planted.train} are invalid")
    assert "invalid JSON" in schema.locations[0]["error"]
    assert 'field "output"' in schema.locations[1]["error"]
    [dup] = report.find("duplicate")
    assert dup.lines() == [1, 2] and dup.severity == "warning"
    [near] = report.find("near_duplicate")
    assert [(loc["line"], loc["near"]) for loc in near.locations] == [(4, f"{planted.train}:3")]
    [leak] = report.find("leak_exact")
    assert leak.severity == "error" and leak.count == 1
    assert leak.locations[0]["line"] == 2 and leak.locations[0]["matches"] == f"{planted.train}:13"
    [near_leak] = report.find("leak_near")
    assert [(loc["file"], loc["line"]) for loc in near_leak.locations] == [(str(planted.test), 3)]
    [empty] = report.find("empty_field")
    assert empty.locations == [{"file": str(planted.train), "line": 14, "record": 13, "field": "output"}]
    assert report.exit_code == 1


def test_a_near_duplicate_cluster_is_one_line_per_record_not_a_line_per_pair(tmp_path: Path) -> None:
    """A text, two exact copies and two near copies (one word changed each) in train, a near copy in eval: each
    near copy is listed once with its most similar earlier record of its split, the eval one once as leakage;
    exact copies are duplicates, never near-duplicates (pairs would list line 4 three times, one per copy)."""
    rng = random.Random(3)
    words = [rng.choice(["alpha", "bravo", "delta", "gamma", "kilo", "lima", "oscar", "tango"]) + str(k % 7)
             for k in range(80)]  # fmt: skip

    def variant(k: int, word: str) -> str:
        return " ".join(words[:k] + [word] + words[k + 1 :])

    base = " ".join(words)
    train, dev = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    rows = [base, base, base, variant(10, "zulu"), variant(60, "yankee"), "an unrelated text " * 5]
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    dev.write_text(json.dumps({"text": variant(40, "xray")}) + "\n" + json.dumps({"text": "other " * 9}) + "\n")
    report = check([str(train)], eval=[str(dev)], options=CheckOptions(pii=False))
    [near] = report.find("near_duplicate")
    assert [(loc["line"], loc["near"]) for loc in near.locations] == [(4, f"{train}:1"), (5, f"{train}:1")]
    assert near.message.startswith("2 records are near-duplicates")
    [leak] = report.find("leak_near")
    assert [(loc["line"], loc["near"]) for loc in leak.locations] == [(1, f"{train}:1")]
    [dup] = report.find("duplicate")
    assert dup.lines() == [1, 2, 3]


def test_each_pii_kind_has_its_count_and_line(planted: Planted) -> None:
    report = check([str(planted.train)], options=CheckOptions(near_duplicates=False))
    by_kind = {p.locations[0]["kind"]: p for p in report.find("pii") + report.find("secret")}
    expected = {"email": 7, "phone": 8, "card": 9, "iban": 10, "ip": 11, "secret": 12}
    assert {k: p.lines() for k, p in by_kind.items()} == {k: [line] for k, line in expected.items()}
    assert by_kind["secret"].severity == "error" and by_kind["email"].severity == "warning"
    assert all(p.count == 1 for p in by_kind.values())


def test_labels_conflicts_and_multiline_csv(planted: Planted) -> None:
    report = check([str(planted.labels)])
    [conflict] = report.find("label_conflict")
    assert [(loc["line"], loc["label"]) for loc in conflict.locations] == [
        (2, "card_arrival"),
        (5, "lost_card"),
    ]
    [dup] = report.find("duplicate")
    assert dup.lines() == [3, 6]
    [missing] = report.find("missing_label")
    assert missing.lines() == [9]
    stats = report.files[0]
    assert stats["label_column"] == "category" and stats["records"] == 7
    assert stats["labels"] == {"card_arrival": 2, "top_up": 2, "damaged_card": 1, "lost_card": 1}


def test_clean_data_passes_and_json_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document number {w} is fine"}) for w in "abcdef") + "\n")
    report = check([str(path)])
    assert report.problems == [] and report.exit_code == 0
    data = json.loads(report.to_json())
    assert data["ok"] and data["files"][0]["records"] == 6 and data["summary"]["error"] == 0


def test_strict_turns_warnings_into_a_failing_exit(planted: Planted) -> None:
    loose = check([str(planted.labels)], options=CheckOptions(pii=False))
    strict = check([str(planted.labels)], options=CheckOptions(pii=False, strict=True))
    assert loose.exit_code == 0 and strict.exit_code == 1


def test_inspect_tokens_roles_truncation_and_histogram(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "x" * 300},
                {"role": "assistant", "content": "ok"},
            ]
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tok = byte_tokenizer()
    stats = inspect_dataset(load_dataset(str(path)), tokenizer=tok, max_length=100)
    assert stats["roles"] == {"user": 2, "assistant": 2, "system": 1}
    assert stats["turns"]["counts"] == {2: 1, 3: 1}
    assert stats["length_unit"] == "tokens" and stats["length"]["max"] > 300
    assert [t["line"] for t in stats["truncated"]] == [2]
    png = plot_lengths([stats], tmp_path / "hist.png", max_length=100)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dataset_config_with_columns(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"q": "why?", "a": "because"}) + "\n" + json.dumps({"q": "why?", "a": "because"}) + "\n")
    cfg = DatasetConfig(path=str(path), format="alpaca", columns={"instruction": "q", "output": "a"})
    report = check([cfg])
    assert report.files[0]["format"] == "alpaca" and report.find("duplicate")[0].lines() == [1, 2]


def test_banking77_train_vs_test() -> None:
    train = shared_path("data", "banking77", "train.csv")
    test = shared_path("data", "banking77", "test.csv")
    start = time.perf_counter()
    report = check([str(train)], test=[str(test)])
    assert time.perf_counter() - start < 60
    files = {f["role"]: f for f in report.files}
    assert files["train"]["records"] == 10003 and files["test"]["records"] == 3080
    assert len(files["train"]["labels"]) == 77
    # Real findings (see the closing note): exact test-in-train leakage, duplicates, near leakage.
    [leak] = report.find("leak_exact")
    assert leak.count == 7
    assert sum(p.count - 1 for p in report.find("duplicate")) == 4
    assert report.find("leak_near") and report.exit_code == 1


def test_tool_call_rows_differ_by_their_calls_and_count_them(tmp_path: Path) -> None:
    from tests.unit.data.test_tool_rows import openai_row

    from tunelab.data.formats import FORMATS
    from tunelab.data.tokenize import Encoder, chat_template_for

    rows = []
    for city in ("Paris", "Rome"):
        row = openai_row()
        row["messages"][1]["tool_calls"][0]["function"]["arguments"] = json.dumps({"city": city})
        rows.append(row)
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert check([str(path)], options=CheckOptions(pii=False)).find("duplicate") == []  # the calls differ
    tok = byte_tokenizer()
    stats = inspect_dataset(load_dataset(str(path)), tokenizer=tok)
    trained = Encoder(tok, chat_template_for(tok)).encode(FORMATS["messages"](rows[0]))
    assert stats["length"]["max"] == len(trained.input_ids)  # measured as training renders it: tools and call
