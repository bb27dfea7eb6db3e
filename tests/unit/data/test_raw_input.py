"""Raw bytes that used to get through the readers: non-UTF-8 or binary files, and records far too big."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pandas as pd
import pytest

from tunelab.config import DatasetConfig
from tunelab.data.pipeline import load_records
from tunelab.data.sources import read_rows
from tunelab.errors import DataError
from tunelab.eval.perplexity import load_probe_texts
from tunelab.quality.items import load_dataset
from tunelab.textio import lines

GOOD = json.dumps({"instruction": "Reverse.", "output": "b a"}) + "\n"


def error(path: Path, limit: int | None = None) -> str:
    with pytest.raises(DataError) as e:
        load_records(DatasetConfig(path=str(path), format="alpaca"), *([limit] if limit else []))
    return str(e.value)


def random_bytes(n: int, seed: int = 0) -> bytes:
    return bytes(random.Random(seed).randrange(256) for _ in range(n))


def test_random_bytes_in_jsonl_name_file_line_and_byte_offset(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    noise = b"\xc3" + random_bytes(64)  # 0xc3 starts a two-byte sequence; what follows is random
    p.write_bytes(GOOD.encode() * 2 + noise + b"\n" + GOOD.encode())
    msg = error(p)
    assert msg.startswith(f"{p}, line 3: not UTF-8 text: byte 0xc3 at byte offset {2 * len(GOOD)}")
    assert "UnicodeDecodeError" not in msg


def test_binary_file_is_one_error_even_for_the_data_toolkit(tmp_path: Path) -> None:
    p = tmp_path / "model.jsonl"  # e.g. a gzip or a tensor file given the wrong name
    p.write_bytes(GOOD.encode() + b"\x1f\x8b\x08\x00\x00\x00" + random_bytes(200))
    assert f"{p}, line 2: binary data (a NUL byte at byte offset {len(GOOD) + 3})" in error(p)
    ds = load_dataset(str(p))
    assert len(ds.valid) == 1 and ds.file_error and "binary data" in ds.file_error


def test_other_encoding_is_reported_per_line_by_the_toolkit_and_nothing_is_lost(tmp_path: Path) -> None:
    p = tmp_path / "latin.jsonl"
    latin = json.dumps({"instruction": "café", "output": "x"}, ensure_ascii=False).encode("latin-1") + b"\n"
    p.write_bytes(GOOD.encode() + latin + GOOD.encode())
    ds = load_dataset(str(p), fmt="alpaca")
    assert [it.line for it in ds.items] == [1, 2, 3] and len(ds.valid) == 2
    assert "line 2: not UTF-8 text: byte 0xe9" in (ds.items[1].error or "")


def test_csv_json_and_probe_texts_name_the_bad_byte(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_bytes(b"instruction,output\nok,fine\ncaf\xe9,x\n")
    assert f"{csv}, line 3: not UTF-8 text: byte 0xe9 at byte offset 30" in error(csv)
    arr = tmp_path / "d.json"
    arr.write_bytes(b'[\n {"instruction": "a", "output": "b"},\n {"instruction": "\xff", "output": "c"}\n]\n')
    assert f"{arr}, line 3: not UTF-8 text: byte 0xff" in error(arr)
    probes = tmp_path / "probes.jsonl"
    probes.write_bytes(b'{"text": "fine"}\n{"text": "\xfe"}\n')
    with pytest.raises(DataError, match=r"probes.jsonl, line 2: not UTF-8 text: byte 0xfe at byte offset 27"):
        load_probe_texts(probes)


def test_utf8_bom_and_crlf_still_read(tmp_path: Path) -> None:
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode() * 2)
    assert [r.line for r in read_rows(str(p))] == [1, 2]
    c = tmp_path / "crlf.csv"
    c.write_bytes(b'\xef\xbb\xbfinstruction,output\r\n"two\r\nlines",x\r\n')
    assert [r.data for r in read_rows(str(c))] == [{"instruction": "two\r\nlines", "output": "x"}]


def test_a_record_over_the_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    huge = json.dumps({"instruction": "x" * 50_000, "output": "y"}) + "\n"
    p.write_text(GOOD + huge + GOOD)
    msg = error(p, 20_000)
    assert msg.startswith(f"{p}, line 2: record is {len(huge) - 1:,} bytes, over the limit of 20,000 bytes")
    assert "data.max_record_bytes" in msg
    assert len(load_records(DatasetConfig(path=str(p), format="alpaca"))[1]) == 3  # the default limit is 4 MiB
    ds = load_dataset(str(p), fmt="alpaca", max_record_bytes=20_000)  # the toolkit lists it and keeps the rest
    assert len(ds.valid) == 2 and "record is 50,0" in (ds.items[1].error or "")


def test_an_over_long_line_is_never_held_whole() -> None:
    data = b"short\n" + b"z" * 10_000 + b"\r\nlast"
    got = list(lines(io.BytesIO(data), 100))
    assert [(ln.number, ln.offset, ln.size) for ln in got] == [(1, 0, 5), (2, 6, 10_000), (3, 10_008, 4)]
    assert got[1].raw is None and got[1].end == b"\r\n" and got[2].raw == b"last"


def test_record_limit_in_csv_parquet_and_json_arrays(tmp_path: Path) -> None:
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "q" * 300_000, "output": "c"}]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)  # a field over csv's own 131072-char limit
    assert [len(r.data["instruction"]) for r in read_rows(str(tmp_path / "d.csv"))] == [1, 300_000]
    assert f"{tmp_path / 'd.csv'}, line 3: record is 300,0" in error(tmp_path / "d.csv", 100_000)
    multi = tmp_path / "m.csv"  # one record over many short lines: its bytes are counted, not its lines
    multi.write_text('instruction,output\n"' + "line\n" * 30_000 + '",x\n')
    assert f"{multi}, line 2: record is 150,0" in error(multi, 100_000)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    assert f"{tmp_path / 'd.parquet'}, record 1: record is 300,0" in error(tmp_path / "d.parquet", 100_000)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    assert f"{tmp_path / 'd.json'}, record 1: record is 300,0" in error(tmp_path / "d.json", 100_000)
