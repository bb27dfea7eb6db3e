"""Readers for every source type, and the bad-input messages (file, line/record, field, what was expected)."""

import json

import pandas as pd
import pytest

from tunelab.config import DatasetConfig
from tunelab.data.pipeline import load_records
from tunelab.data.sources import read_rows
from tunelab.errors import DataError

ROWS = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]


def write_jsonl(path, rows, blank_at=None):
    lines = [json.dumps(r) for r in rows]
    if blank_at is not None:
        lines.insert(blank_at, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_file_type_reads_the_same_rows(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "folder"))
    for name in ("d.jsonl", "d.json", "d.csv", "d.parquet", "folder"):
        assert [r.data for r in read_rows(str(tmp_path / name))] == ROWS, name


def test_line_numbers_skip_blank_lines_and_count_csv_header(tmp_path):
    rows = list(read_rows(str(write_jsonl(tmp_path / "d.jsonl", ROWS, blank_at=1))))
    assert [r.line for r in rows] == [1, 3]
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    assert [r.line for r in read_rows(str(tmp_path / "d.csv"))] == [2, 3]


def err(path, fmt="auto", **kw):
    with pytest.raises(DataError) as e:
        load_records(DatasetConfig(path=str(path), format=fmt, **kw))
    return str(e.value)


def test_missing_file(tmp_path):
    assert "nope.jsonl: file not found" in err(tmp_path / "nope.jsonl")


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    assert err(tmp_path / "e.jsonl").endswith("e.jsonl: file is empty")


def test_invalid_json_on_line_n(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n" + '{"instruction": "x",\n')
    assert "d.jsonl, line 2: invalid JSON" in err(p)


def test_missing_field_and_wrong_type_name_line_and_field(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"instruction": "x"}, {"instruction": 5, "output": "y"}])
    msg = err(p, "alpaca")
    assert "2 invalid records" in msg
    assert 'd.jsonl, line 2, field "output": missing required field' in msg
    assert 'd.jsonl, line 3, field "instruction": expected a string, got a number' in msg


def test_unknown_role_and_no_assistant(tmp_path):
    p = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "wizard", "content": "x"}]}])
    assert "m.jsonl, line 1, field \"messages[0].role\": unknown role 'wizard'" in err(p, "messages")
    p = write_jsonl(tmp_path / "n.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    assert 'n.jsonl, line 1, field "messages": conversation has no assistant turn' in err(p, "messages")


def test_json_array_errors_name_the_record(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([ROWS[0], {"instruction": "x"}]))
    assert 'd.json, record 1, field "output"' in err(p, "alpaca")


def test_columns_mapping_naming_a_missing_column(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"q": "a", "a": "b"}])
    msg = err(p, "alpaca", columns={"instruction": "question", "output": "a"})
    assert "d.jsonl, line 1, field \"question\": column 'question'" in msg and "the record has: q, a" in msg


def test_undetectable_format_says_what_to_set(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"foo": 1}])
    assert "cannot detect the format" in err(p)


def test_csv_with_too_many_fields(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text\nfine\n"a","b"\n')
    with pytest.raises(DataError, match="d.csv, line 3: row has more fields"):
        list(read_rows(str(p)))


def test_csv_with_too_few_fields(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nfine,a\nshort\n")
    with pytest.raises(DataError, match="d.csv, line 3: row has fewer fields than the header"):
        list(read_rows(str(p)))


def test_hub_id_without_network_says_how_to_fix():
    with pytest.raises(DataError, match="no network or not found.*save_to_disk"):
        list(read_rows("someone/some-dataset"))
