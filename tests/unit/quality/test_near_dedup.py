"""Near-duplicates from chunked MinHash band keys: pairs confirmed by exact Jaccard, exact copies expanded,
the same for any number of workers and any chunk size; LeanItems say what Items say."""

import json
import random

import pytest

from tunelab.data.sources import ReadOptions
from tunelab.errors import DataError
from tunelab.quality import dedup
from tunelab.quality.items import load_dataset
from tunelab.textio import BOM


def texts(n=300, seed=0):
    rng = random.Random(seed)
    words = [f"w{k}" for k in range(500)]
    base = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(n)]
    out = list(base)
    out[10] = base[3].replace(base[3].split()[5], "changed", 1)  # near copy of 3
    out[20] = base[3]  # exact copy of 3
    out[30] = "  " + base[3].upper()  # the same after normalizing
    return out


def brute(ts, threshold):
    sets = [dedup.shingles(t) for t in ts]
    norms = [dedup.normalize(t) for t in ts]
    return {(i, j) for i in range(len(ts)) for j in range(i + 1, len(ts))
            if norms[i] != norms[j] and dedup.jaccard(sets[i], sets[j]) >= 0.8}  # fmt: skip


def test_pairs_match_the_exact_similarity_and_copies_are_expanded():
    ts = texts()
    got = dedup.near_pairs(ts, 0.8)
    assert {(i, j) for i, j, _ in got} == brute(ts, 0.8) == {(3, 10), (10, 20), (10, 30)}
    assert all(sim >= 0.8 for _, _, sim in got)


def test_workers_and_chunks_change_nothing(monkeypatch):
    ts = texts(seed=1)
    one = dedup.near_pairs(ts, 0.8)
    assert dedup.near_pairs(ts, 0.8, workers=2) == one
    monkeypatch.setattr(dedup, "CHUNK", 7)
    assert dedup.near_pairs(ts, 0.8) == one


def test_lean_items_say_what_items_say(tmp_path):
    rows = [{"instruction": "Q", "input": "ctx", "output": "A", "label": "x"}, {"text": "nope"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]  # fmt: skip
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n{bad json\n")
    full, lean = load_dataset(str(p)), load_dataset(str(p), lean=True)
    for a, b in zip(full.items, lean.items, strict=True):
        assert (a.row, a.record, a.error, a.label, a.fields) == (b.row, b.record, b.error, b.label, b.fields)
        assert (a.input_text, a.full_text, a.location()) == (b.input_text, b.full_text, b.location())


def test_lean_items_read_again_from_the_file_say_what_items_say(tmp_path):
    """A UTF-8 JSONL file's LeanItems keep only where their line is: a BOM, CRLF breaks, blank lines and
    non-ASCII text must not shift what is read back; a transcoded file (latin-1) keeps its rows packed."""
    rows = [{"instruction": "Größe? 日本語", "input": "", "output": "naïve café " * 40},
            {"prompt": "p\u2028q", "completion": "emoji 🤗"}, {"instruction": "x", "output": "y"}]  # fmt: skip
    p = tmp_path / "odd.jsonl"
    p.write_bytes(BOM + b"\r\n".join(json.dumps(r, ensure_ascii=False).encode() for r in rows[:2]) + b"\r\n\r\n"
                  + json.dumps(rows[2]).encode())  # fmt: skip
    full, lean = load_dataset(str(p)), load_dataset(str(p), lean=True)
    assert [it.row for it in lean.items] == rows
    for a, b in zip(full.items, lean.items, strict=True):
        assert (a.record, a.full_text, a.input_text, a.fields) == (b.record, b.full_text, b.input_text, b.fields)
    q = tmp_path / "latin.jsonl"
    q.write_bytes("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in ("café", "déjà")).encode("latin-1"))
    transcoded = load_dataset(str(q), lean=True, options=ReadOptions(encoding="latin-1"))
    assert [it.full_text for it in transcoded.items] == ["café", "déjà"]


def test_a_file_changed_under_a_lean_check_is_an_error_not_a_wrong_row(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "first"}) + "\n" + json.dumps({"text": "second"}) + "\n")
    lean = load_dataset(str(p), lean=True)
    p.write_text(json.dumps({"text": "other"}) + "\n")  # rewritten in place
    with pytest.raises(DataError, match="changed while it was being checked") as e:
        _ = lean.items[1].full_text
    assert str(p) in str(e.value)


@pytest.mark.parametrize("threshold", [0.7, 0.9])
def test_thresholds_hold(threshold):
    ts = texts(seed=2)
    assert {(i, j) for i, j, _ in dedup.near_pairs(ts, threshold)} <= brute(ts, threshold)
