"""Real data as people bring it, read without conversion: TSV and other delimiters, other encodings, CoNLL column
files, Human/Assistant transcripts, column templates; and what a file that does not fit is told."""

from __future__ import annotations

import json

import pytest

from tunelab.config import DatasetConfig
from tunelab.data.pipeline import load_records
from tunelab.data.records import Labelled, Message, Preference, TokenTags
from tunelab.data.sources import ReadOptions, read_rows
from tunelab.errors import DataError
from tunelab.quality.check import check
from tunelab.textio import detect_encoding


def records(tmp_path, name: str, content: str | bytes, **ds) -> tuple[str, list]:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    fmt, recs = load_records(DatasetConfig(path=str(p), **ds))
    return fmt, [r for r, _ in recs]


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kwargs)
    return str(e.value)


# ------------------------------------------------------------------------------------------ delimiters


def test_tsv_is_read_by_its_suffix_and_any_delimiter_by_name(tmp_path) -> None:
    tsv = "text\tlabel\ngood, really good\tpos\nbad\tneg\n"
    assert records(tmp_path, "s.tsv", tsv, format="labelled")[1] == [Labelled("good, really good", "pos"),
                                                                      Labelled("bad", "neg")]  # fmt: skip
    semi = "text;label\nfine;pos\n"
    assert records(tmp_path, "s.csv", semi, format="labelled", delimiter=";")[1] == [Labelled("fine", "pos")]


def test_a_tsv_named_csv_gets_a_hint_about_tabs(tmp_path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("text\tlabel\nhello there\tpos\nbye, now\tneg\n")
    msg = error(lambda: list(read_rows(str(p))))
    assert msg.startswith(f"{p}, line 1: the header row has a tab, not a comma,")
    assert 'set delimiter: "\\t" on the dataset (or name the file .tsv)' in msg
    assert [r.data["label"] for r in read_rows(str(p), options=ReadOptions(delimiter="\t"))] == ["pos", "neg"]


# ------------------------------------------------------------------------------------------ encodings


FRENCH = [
    "Le café était très bon, et le crème brûlée aussi.",
    "À bientôt, j'espère : c'était génial !",
    "Le service était lent et la soupe froide.",
    "Très déçu par la qualité du gâteau.",
    "Une expérience agréable, le personnel est très sympathique.",
    "Où est passé le garçon ? Nous avons attendu.",
    "Les crêpes étaient délicieuses et pas chères.",
    "Je ne reviendrai pas, c'était sale et bruyant.",
]


def test_latin1_named_or_detected_and_the_error_names_the_option(tmp_path) -> None:
    raw = ("text,label\n" + "".join(f'"{t}",{"pos" if i % 3 != 2 else "neg"}\n' for i, t in enumerate(FRENCH))).encode(
        "latin-1"
    )
    assert records(tmp_path, "l.csv", raw, format="labelled", encoding="latin-1")[1][0].text == FRENCH[0]
    assert [r.text for r in records(tmp_path, "l.csv", raw, format="labelled", encoding="auto")[1]] == FRENCH
    msg = error(records, tmp_path, "l.csv", raw, format="labelled")
    assert "line 2: not UTF-8 text: byte 0xe9 at byte offset 18" in msg and "encoding: auto" in msg


def test_utf16_is_detected_by_its_bom_and_offsets_point_into_the_original_file(tmp_path) -> None:
    rows = [{"text": "naïve", "label": "a"}, {"text": "Ωmega", "label": "b"}]
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-16")
    (tmp_path / "u.jsonl").write_bytes(raw)
    assert detect_encoding(tmp_path / "u.jsonl") == "utf-16"
    assert [r.text for r in records(tmp_path, "u.jsonl", raw, format="labelled", encoding="auto")[1]] == [
        "naïve",
        "Ωmega",
    ]
    bad = b"text,label\nok,a\n\x81bad,b\n"  # 0x81 is not a cp1252 character
    msg = error(records, tmp_path, "c.csv", bad, format="labelled", encoding="cp1252")
    assert "line 3: not cp1252 text: byte 0x81 at byte offset 16" in msg


def test_an_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'latin-9000'"):
        DatasetConfig(path="x.csv", encoding="latin-9000")


# ------------------------------------------------------------------------------------------ CoNLL files


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_column_files_become_tagged_sentences(tmp_path) -> None:
    fmt, recs = records(tmp_path, "ner.conll", CONLL)
    assert fmt == "token_tags"
    assert recs == [TokenTags(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O")),
                    TokenTags(("Peter", "Blackburn"), ("B-PER", "I-PER"))]  # fmt: skip
    rows = list(read_rows(str(tmp_path / "ner.conll")))
    assert [r.line for r in rows] == [3, 8]
    (tmp_path / "ner.txt").write_text(CONLL)
    assert records(tmp_path, "ner.txt", CONLL, reader="conll")[1] == recs  # any suffix, by name


def test_conll_bad_lines_name_the_line_and_the_data_check_reports_each_sentence(tmp_path) -> None:
    bad = "EU B-ORG\nrejects\n\nPeter B-PER\nx y B-PER\n\nok O\n"
    msg = error(records, tmp_path, "bad.conll", bad)
    assert "line 1: line 2: expected at least two columns (a word and its tag), got 1" in msg
    report = check([str(tmp_path / "bad.conll")], options=None)
    [schema] = report.find("schema")
    assert schema.lines() == [1, 4] and "line 5: 3 columns, but the file's first token line has 2" in str(
        schema.locations[1]["error"]
    )


# ------------------------------------------------------------------------------------------ transcripts


def test_human_assistant_transcripts_are_preference_pairs(tmp_path) -> None:
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris.",
           "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: No idea."}  # fmt: skip
    fmt, [rec] = records(tmp_path, "hh.jsonl", json.dumps(row) + "\n")
    assert fmt == "preference"
    assert rec == Preference(
        (Message("user", "Hi"), Message("assistant", "Hello!", 0.0), Message("user", "Capital of France?")),
        (Message("assistant", "Paris."),),
        (Message("assistant", "No idea."),),
    )
    other = {**row, "rejected": "\n\nHuman: Hello\n\nAssistant: Hi!\n\nHuman: Capital of France?\n\nAssistant: No."}
    msg = error(records, tmp_path, "hh2.jsonl", json.dumps(other) + "\n", format="transcript")
    assert (
        "line 1, field \"rejected\": the dialogue before the last 'Assistant:' turn differs from chosen's (turn 1)"
        in msg
    )


# ------------------------------------------------------------------------------------------ templates


def test_a_template_combines_columns_and_a_missing_one_is_named(tmp_path) -> None:
    tsv = "title\tdescription\ttopic\nWall St. Bears Claw Back\tShort-sellers see green again.\tbusiness\n"
    cols = {"text": "{title}. {description}", "label": "topic"}
    assert records(tmp_path, "news.tsv", tsv, format="labelled", columns=cols)[1] == [
        Labelled("Wall St. Bears Claw Back. Short-sellers see green again.", "business")
    ]
    msg = error(
        records, tmp_path, "news.tsv", tsv, format="labelled", columns={"text": "{title}: {body}", "label": "topic"}
    )
    assert "line 2, field \"body\": column 'body' (in the template for 'text' in columns:) not found" in msg


# ------------------------------------------------------------------------------------------ what does not fit


def test_missing_fields_suggest_the_mapping_and_errors_are_capped(tmp_path) -> None:
    csv = "sentence,sentiment\n" + "".join(f"text {i},pos\n" for i in range(15))
    msg = error(records, tmp_path, "s.csv", csv, format="labelled")
    assert msg.startswith(f"15 invalid records in {tmp_path / 's.csv'}:")
    assert msg.count("missing required field (fields present: sentence, sentiment)") == 10
    assert "... and 5 more" in msg and msg.endswith("did you mean `columns: {text: sentence, label: sentiment}`?")
    auto = error(records, tmp_path, "s.csv", csv)
    assert "did you mean `format: labelled, columns: {text: sentence, label: sentiment}`?" in auto


@pytest.mark.parametrize(("name", "content"), [("e.jsonl", ""), ("b.jsonl", "\n\n"), ("h.csv", "text,label\n"),
                                               ("e.conll", "\n\n")])  # fmt: skip
def test_empty_input_is_an_error_for_training_and_for_the_check(tmp_path, name: str, content: str) -> None:
    p = tmp_path / name
    p.write_text(content)
    error(records, tmp_path, name, content)
    report = check([str(p)])
    assert report.exit_code == 1 and report.find("file_error")
