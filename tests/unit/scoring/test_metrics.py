"""Each metric against a hand computation or the reference library on fixed inputs."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from sklearn.metrics import f1_score

from tunelab.errors import DataError
from tunelab.scoring.extract import UNPARSEABLE, extract_label, find_json
from tunelab.scoring.metrics import METRICS, bleu, chrf, classification, exact_match, f1, json_fields, normalize, rouge


def test_normalize_is_squad_style() -> None:
    assert normalize("The  Cat, sat!") == "cat sat"
    assert normalize("An apple", strip_articles=False) == "an apple"
    assert normalize("A.B", lowercase=False, strip_articles=False) == "AB"


def test_exact_match_normalization_options() -> None:
    preds = ["The Eiffel Tower.", "paris", "Paris "]
    refs = ["eiffel tower", "Paris", ["London", "paris"]]
    assert exact_match(preds, refs).per_example["exact_match"] == [1.0, 1.0, 1.0]
    raw = exact_match(preds, refs, normalize_mode="none")
    assert raw.per_example["exact_match"] == [0.0, 0.0, 0.0]
    cased = exact_match(preds, refs, lowercase=False)
    assert cased.per_example["exact_match"] == [0.0, 0.0, 0.0]  # "Eiffel Tower" != "eiffel tower", ...
    assert exact_match(["a b"], ["a b"]).scores["exact_match"] == 1.0


def test_token_f1_hand_computed() -> None:
    # pred tokens: [cat, sat, on, mat]; ref: [cat, sat, on, red, mat, today] -> common 4
    # precision 4/4, recall 4/6 -> F1 = 2*1*(2/3)/(1+2/3) = 0.8
    r = f1(["The cat sat on the mat"], ["the cat sat on a red mat today"])
    assert r.scores["f1"] == pytest.approx(0.8)
    # duplicates are counted with multiplicity: pred [a1 x2] vs ref [a1]: common 1, P=1/2, R=1 -> 2/3
    assert f1(["go go"], ["go"]).scores["f1"] == pytest.approx(2 / 3)
    assert f1(["nothing"], ["else"]).scores["f1"] == 0.0
    assert f1(["x", "y z"], [["q", "x"], "y"]).per_example["f1"] == pytest.approx([1.0, 2 / 3])


def test_rouge_hand_computed() -> None:
    r = rouge(["the cat sat"], ["the cat ran"])
    # unigrams 2 of 3 on both sides; bigrams "the cat" 1 of 2; LCS "the cat" = 2 of 3
    assert r.scores["rouge1"] == pytest.approx(2 / 3)
    assert r.scores["rouge2"] == pytest.approx(1 / 2)
    assert r.scores["rougeL"] == pytest.approx(2 / 3)
    two = rouge(["a b", "c d"], ["a b", "x y"])
    assert two.per_example["rouge1"] == [1.0, 0.0] and two.scores["rouge1"] == 0.5


def test_bleu_and_chrf_match_sacrebleu() -> None:
    preds = ["the cat is on the mat", "a quick brown fox jumps", "completely different words"]
    refs = ["the cat sat on the mat", "the quick brown fox jumps over", "nothing in common here"]
    b = bleu(preds, refs)
    assert b.scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert b.per_example["bleu"][0] == pytest.approx(sacrebleu.sentence_bleu(preds[0], [refs[0]]).score)
    assert bleu(["same words here ok"], ["same words here ok"]).scores["bleu"] == pytest.approx(100.0)
    c = chrf(preds, refs)
    assert c.scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert c.per_example["chrf"][2] < c.per_example["chrf"][0]
    with pytest.raises(DataError, match="same number of references"):
        bleu(["a", "b"], [["a", "x"], "b"])


def test_json_fields() -> None:
    refs = [
        {"name": "Ann", "age": 3},
        json.dumps({"name": "Bo", "age": 5}),
        {"name": "Cy", "age": 7},
        {"name": "D", "age": 1},
    ]
    preds = [
        'Sure! {"name": "Ann", "age": 3}',  # all right, JSON inside prose
        '```json\n{"name": "Bo", "age": 6}\n```',  # one field wrong
        "name: Cy, age: 7",  # not JSON
        '{"name": "D", "age": 1, "extra": true}',  # extra field ignored
    ]
    r = json_fields(preds, refs)
    assert r.per_example["json_valid"] == [1, 1, 0, 1]
    assert r.per_example["json_all_fields"] == [1, 0, 0, 1]
    assert r.per_example["json_field_accuracy"] == [1, 0.5, 0, 1]
    assert r.details["invalid"] == 1
    assert r.details["per_field_accuracy"] == {"name": 0.75, "age": 0.5}
    assert r.scores["json_all_fields"] == 0.5
    only_name = json_fields(preds, refs, fields=["name"])
    assert only_name.per_example["json_all_fields"] == [1, 1, 0, 1]
    with pytest.raises(DataError, match="reference 1"):
        json_fields(["{}", "{}"], [{"a": 1}, "not json"])


def test_extract_label_methods() -> None:
    assert extract_label("Answer: Positive.\nBecause...", "regex", pattern=r"answer:\s*(\w+)") == "Positive"
    assert extract_label("label=neg", "regex", pattern=r"label=(?P<label>\w+)") == "neg"
    assert extract_label("nothing here", "regex", pattern=r"answer:\s*(\w+)") is None
    assert extract_label('{"label": "spam", "p": 0.9}', "json") == "spam"
    assert extract_label('{"cls": "spam"}', "json", field="cls") == "spam"
    assert extract_label("not json", "json") is None
    assert extract_label("\n  positive.\nsecond line", "first_line") == "positive"
    assert extract_label("POSITIVE", "first_line", labels=["positive", "negative"]) == "positive"
    assert extract_label("positiv", "first_line", labels=["positive", "negative"]) is None
    labels = ["spam", "not spam"]
    assert extract_label("I think this is not spam at all", "label_set", labels=labels) == "not spam"
    assert extract_label("Spam, clearly.", "label_set", labels=labels) == "spam"
    assert extract_label("no idea", "label_set", labels=labels) is None
    assert extract_label("spammy stuff", "label_set", labels=labels) is None  # whole words only
    assert find_json("x [1, 2] y") == [1, 2]


def test_classification_counts_unparseable_and_matches_sklearn() -> None:
    refs = ["pos", "pos", "neg", "neg", "neu", "pos"]
    preds = ["pos", "neg", "neg", "???", "neu", "Pos"]
    r = classification(preds, refs, labels=["pos", "neg", "neu"])
    assert r.details["unparseable"] == 1
    assert r.per_example["accuracy"] == [1, 0, 1, 0, 1, 1]
    assert r.scores["accuracy"] == pytest.approx(4 / 6)
    gold = refs
    pred = ["pos", "neg", "neg", UNPARSEABLE, "neu", "pos"]
    assert r.scores["f1_macro"] == pytest.approx(f1_score(gold, pred, labels=["pos", "neg", "neu"], average="macro"))
    # hand: pos P=2/2 R=2/3; neg P=1/2 R=1/2; neu P=1 R=1. micro over the label set: TP=4, predicted 5, true 6
    assert r.scores["precision_micro"] == pytest.approx(4 / 5)
    assert r.scores["recall_micro"] == pytest.approx(4 / 6)
    assert r.details["per_class"]["neg"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    cm = r.details["confusion_matrix"]
    assert cm["labels"] == ["pos", "neg", "neu", UNPARSEABLE]
    assert cm["rows_true_cols_pred"] == [[2, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert sum(map(sum, cm["rows_true_cols_pred"])) == len(refs)  # nothing dropped
    with pytest.raises(DataError, match="reference 0"):
        classification(["a"], ["zzz"], labels=["a", "b"])


def test_registry_names_cover_config_names() -> None:
    from tunelab.config import METRIC_NAMES

    assert set(METRICS) <= set(METRIC_NAMES)
    assert set(METRIC_NAMES) - set(METRICS) == {"loss", "perplexity", "judge", "reward"}  # dispatched by the runner
