"""exact_match and f1 on the final answer only: the last number or a pattern, numbers compared as numbers."""

from __future__ import annotations

import pytest

from tunelab.config import EvalConfig, MetricSpec
from tunelab.errors import ConfigError
from tunelab.eval.runner import metric_options
from tunelab.scoring.extract import as_number, extract_answer
from tunelab.scoring.metrics import exact_match, f1

GSM = r"####\s*(?P<answer>.+)"


def test_the_last_number_and_patterns() -> None:
    assert extract_answer("3 + 4 = 7, so 1,250 apples in total.", "last_number") == "1,250"
    assert extract_answer("It costs $72.50.", "last_number") == "$72.50"  # as_number reads it as 72.5
    assert extract_answer("no digits here", "last_number") is None
    assert extract_answer("step #### 5\nso #### 72", GSM) == "72"  # the last match: the answer follows the working
    assert extract_answer("Answer: (B)", r"Answer:\s*\((\w)\)") == "B"
    with pytest.raises(ValueError, match="not a valid regex"):
        extract_answer("x", "(unclosed")


@pytest.mark.parametrize(("text", "value"), [("1,000", 1000.0), ("1000.", 1000.0), ("$72.50", 72.5), ("-3", -3.0),
                                             ("1,00", None), ("seven", None), ("12 apples", None)])  # fmt: skip
def test_numbers_are_read_as_numbers(text: str, value: float | None) -> None:
    assert as_number(text) == value


def test_exact_match_compares_final_answers_and_counts_the_unparseable() -> None:
    preds = ["She has 1,000 now.", "The answer is 72.0", "I am not sure.", "so 12"]
    refs = ["Work: 500 + 500 #### 1000", "#### 72", "#### 5", "#### 13"]
    r = exact_match(preds, refs, answer="last_number")
    assert r.per_example["exact_match"] == [1.0, 1.0, 0.0, 0.0]
    assert r.details["unparseable"] == 1 and r.details["extracted"][0] == "1,000"
    whole = exact_match(preds, refs)  # without extraction nothing matches
    assert whole.per_example["exact_match"] == [0.0, 0.0, 0.0, 0.0]
    pattern = exact_match(["blah #### 1,000", "1000"], ["#### 1000", "#### 1000"], answer=GSM)
    assert pattern.per_example["exact_match"] == [1.0, 0.0] and pattern.details["unparseable"] == 1


def test_f1_on_final_answers() -> None:
    r = f1(["so #### the big dog", "#### 7.0", "#### 8"], ["#### big dog", "#### 7", "#### 9"], answer=GSM)
    assert r.per_example["f1"] == [1.0, 1.0, 0.0]


def test_answer_is_a_metric_option_and_others_are_refused() -> None:
    cfg = EvalConfig()
    assert metric_options(MetricSpec(name="exact_match", options={"answer": "last_number"}), cfg) == {
        "answer": "last_number"
    }
    with pytest.raises(ConfigError, match="has no option 'extract'"):
        metric_options(MetricSpec(name="f1", options={"extract": "last_number"}), cfg)
