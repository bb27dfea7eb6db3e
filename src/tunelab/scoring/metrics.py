"""Text metrics over (prediction, reference) lists; each returns aggregates AND per-example scores.

Per-example scores are what the paired bootstrap in `compare` resamples, so every metric keeps them.
For exact match, F1, ROUGE and JSON the aggregate is the mean of the per-example scores. For BLEU and chrF
the aggregate is the corpus score from sacrebleu (what papers report) while the per-example scores are
sentence-level scores; a comparison's CI is therefore on the mean sentence-level score. For
classification, macro/micro F1 are corpus-level; the per-example score is 1/0 correctness (accuracy).

ROUGE comes from `rouge-score`, BLEU/chrF from `sacrebleu`, classification scores from scikit-learn:
nothing here re-implements them. Exact match and token F1 follow the SQuAD v1.1 evaluation script.
A reference may be a string or a list of acceptable strings (best match counts) for EM, F1 and ROUGE.
EM and F1 can compare only the final answer (`answer: last_number`, or a regex such as `"####\\s*(.+)"`): it is
read from the output and from the reference (a reference without one is taken whole), two numbers are compared as
numbers (`1,000` equals `1000.0`), and an output with no answer scores 0 and is counted as unparseable.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import DataError
from tunelab.scoring.extract import UNPARSEABLE, as_number, extract_answer, extract_label, find_json, same_number

Reference = str | Sequence[str]
_PUNCT = frozenset(string.punctuation)


@dataclass
class MetricResult:
    """`scores`: aggregates by key; `per_example`: one score per example for the keys that have them."""

    name: str
    scores: dict[str, float]
    per_example: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- normalization


def normalize(
    text: str,
    *,
    lowercase: bool = True,
    strip_punctuation: bool = True,
    strip_articles: bool = True,
    strip_whitespace: bool = True,
) -> str:
    """SQuAD's normalize_answer when all options are on (the default)."""
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = "".join(ch for ch in text if ch not in _PUNCT)
    if strip_articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text, flags=re.IGNORECASE)
    if strip_whitespace:
        text = " ".join(text.split())
    return text


def _refs(ref: Reference) -> list[str]:
    refs = [ref] if isinstance(ref, str) else list(ref)
    if not refs:
        raise DataError("empty list of references")
    return refs


def _check_lengths(predictions: Sequence[str], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


# --------------------------------------------------------------------------- exact match and token F1


def exact_match(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    normalize_mode: str = "squad",
    lowercase: bool = True,
    strip_punctuation: bool = True,
    strip_articles: bool = True,
    strip_whitespace: bool = True,
    answer: str | None = None,
) -> MetricResult:
    """1 when the normalized prediction equals a normalized reference. normalize_mode "none" compares raw.
    `answer`: compare only the final answers (last_number or a regex; see the module docstring)."""
    _check_lengths(predictions, references)
    if normalize_mode == "none":
        norm: Callable[[str], str] = lambda s: s  # noqa: E731
    elif normalize_mode == "squad":
        opts = dict(lowercase=lowercase, strip_punctuation=strip_punctuation, strip_articles=strip_articles,
                    strip_whitespace=strip_whitespace)  # fmt: skip
        norm = lambda s: normalize(s, **opts)  # noqa: E731
    else:
        raise ValueError(f"exact_match normalize_mode must be 'squad' or 'none', got {normalize_mode!r}")
    preds, refs, details = _answers(predictions, references, answer)
    per = [_match(p, ref, lambda a, b: float(norm(a) == norm(b))) for p, ref in zip(preds, refs)]
    return MetricResult("exact_match", {"exact_match": _mean(per)}, {"exact_match": per}, details)


def _answers(predictions: Sequence[str], references: Sequence[Reference],
             answer: str | None) -> tuple[list[str | None], list[list[str]], dict[str, Any]]:  # fmt: skip
    """(predicted answers, reference answers, details): the final answers when `answer` is set, else the texts."""
    if answer is None:
        return list(predictions), [_refs(r) for r in references], {}
    preds = [extract_answer(p, answer) for p in predictions]
    refs = [
        [a if (a := extract_answer(r, answer)) is not None else r.strip() for r in _refs(ref)] for ref in references
    ]
    return preds, refs, {"answer": answer, "unparseable": preds.count(None), "extracted": preds}


def _match(pred: str | None, refs: list[str], score: Callable[[str, str], float]) -> float:
    """Best score over the references; an absent answer scores 0; two numbers are compared as numbers."""
    if pred is None:
        return 0.0
    best = 0.0
    for ref in refs:
        a, b = as_number(pred), as_number(ref)
        best = max(best, float(same_number(a, b)) if a is not None and b is not None else score(pred, ref))
    return best


def _token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:  # SQuAD v2 convention: both empty is a match
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1(predictions: Sequence[str], references: Sequence[Reference], *, answer: str | None = None) -> MetricResult:
    """SQuAD token F1 on normalized whitespace tokens, best over the references; `answer`: only the final
    answers (numbers compared as numbers: 1 or 0)."""
    _check_lengths(predictions, references)
    preds, refs, details = _answers(predictions, references, answer)
    per = [_match(p, ref, _token_f1) for p, ref in zip(preds, refs)]
    return MetricResult("f1", {"f1": _mean(per)}, {"f1": per}, details)


# --------------------------------------------------------------------------- ROUGE, BLEU, chrF


def rouge(
    predictions: Sequence[str],
    references: Sequence[Reference],
    *,
    rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
    use_stemmer: bool = False,
) -> MetricResult:
    """ROUGE F-measures from rouge-score (score_multi takes the best reference)."""
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    per: dict[str, list[float]] = {t: [] for t in rouge_types}
    for p, ref in zip(predictions, references):
        scores = scorer.score_multi(_refs(ref), p)
        for t in rouge_types:
            per[t].append(float(scores[t].fmeasure))
    return MetricResult("rouge", {t: _mean(v) for t, v in per.items()}, per)


def _ref_streams(references: Sequence[Reference]) -> list[list[str]]:
    """sacrebleu wants one stream per reference position, so every example needs the same number of refs."""
    lists = [_refs(r) for r in references]
    counts = {len(r) for r in lists}
    if len(counts) > 1:
        raise DataError(f"bleu/chrf need the same number of references for every example, got counts {sorted(counts)}")
    return [list(s) for s in zip(*lists)] if lists else [[]]


def bleu(
    predictions: Sequence[str], references: Sequence[Reference], *, tokenize: str = "13a", lowercase: bool = False
) -> MetricResult:
    """Corpus BLEU (sacrebleu) as the aggregate; sentence BLEU (effective order) per example."""
    from sacrebleu.metrics import BLEU

    _check_lengths(predictions, references)
    streams = _ref_streams(references)
    corpus = BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(list(predictions), streams)
    sent = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)
    per = [float(sent.sentence_score(p, _refs(r)).score) for p, r in zip(predictions, references)]
    return MetricResult("bleu", {"bleu": float(corpus.score)}, {"bleu": per}, {"signature": str(corpus)})


def chrf(
    predictions: Sequence[str], references: Sequence[Reference], *, word_order: int = 0, lowercase: bool = False
) -> MetricResult:
    """Corpus chrF (word_order=2 gives chrF++) as the aggregate; sentence chrF per example."""
    from sacrebleu.metrics import CHRF

    _check_lengths(predictions, references)
    metric = CHRF(word_order=word_order, lowercase=lowercase)
    corpus = metric.corpus_score(list(predictions), _ref_streams(references))
    per = [float(metric.sentence_score(p, _refs(r)).score) for p, r in zip(predictions, references)]
    return MetricResult("chrf", {"chrf": float(corpus.score)}, {"chrf": per})


# --------------------------------------------------------------------------- JSON


def json_fields(
    predictions: Sequence[str], references: Sequence[Any], *, fields: Sequence[str] | None = None
) -> MetricResult:
    """JSON validity and field accuracy: the reference's top-level fields (or `fields`) compared by value.

    An output with no parseable JSON object counts as invalid and wrong on every field.
    """
    _check_lengths(predictions, references)
    refs = [_reference_object(r, i) for i, r in enumerate(references)]
    valid, all_ok, frac = [], [], []
    field_hits: Counter[str] = Counter()
    field_totals: Counter[str] = Counter()
    for pred, ref in zip(predictions, refs):
        obj = find_json(pred)
        ok_obj = isinstance(obj, dict)
        names = list(fields) if fields is not None else list(ref)
        hits = [ok_obj and name in obj and name in ref and obj[name] == ref[name] for name in names]
        for name, hit in zip(names, hits):
            field_totals[name] += 1
            field_hits[name] += int(hit)
        valid.append(float(ok_obj))
        all_ok.append(float(all(hits) and ok_obj))
        frac.append(sum(hits) / len(hits) if hits else float(ok_obj))
    per_field = {name: field_hits[name] / field_totals[name] for name in field_totals}
    scores = {"json_valid": _mean(valid), "json_all_fields": _mean(all_ok), "json_field_accuracy": _mean(frac)}
    details = {"invalid": int(len(valid) - sum(valid)), "per_field_accuracy": per_field}
    return MetricResult(
        "json", scores, {"json_valid": valid, "json_all_fields": all_ok, "json_field_accuracy": frac}, details
    )


def _reference_object(ref: Any, index: int) -> dict[str, Any]:
    obj = find_json(ref) if isinstance(ref, str) else ref
    if not isinstance(obj, dict):
        raise DataError(f"reference {index}: expected a JSON object for the json metric, got {str(ref)[:80]!r}")
    return obj


# --------------------------------------------------------------------------- classification


def classification(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    method: str = "first_line",
    pattern: str | None = None,
    field: str = "label",
    labels: Sequence[str] | None = None,
    case_sensitive: bool = False,
) -> MetricResult:
    """Extract a label from each output, then accuracy, P/R/F1 (macro, micro, per class) and a confusion matrix.

    Unparseable outputs get their own predicted bucket "<unparseable>": wrong for accuracy, a missed
    (false negative) example of the true class for recall, and a column of the confusion matrix.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    _check_lengths(predictions, references)
    classes = list(labels) if labels else sorted({str(r) for r in references})
    extracted = [
        extract_label(p, method, pattern=pattern, field=field, labels=classes if labels else None,
                      case_sensitive=case_sensitive)
        for p in predictions
    ]  # fmt: skip
    pred = [e if e is not None else UNPARSEABLE for e in extracted]
    gold = [_gold_label(r, classes, case_sensitive, i) for i, r in enumerate(references)]
    correct = [float(p == g) for p, g in zip(pred, gold)]
    scores: dict[str, float] = {"accuracy": _mean(correct)}
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=classes, average=avg, zero_division=0)
        scores |= {f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)}
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=classes, average=None, zero_division=0)
    per_class = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, c in enumerate(classes)}  # fmt: skip
    matrix_labels = [*classes, UNPARSEABLE]
    matrix = confusion_matrix(gold, pred, labels=matrix_labels).tolist()
    details = {
        "unparseable": pred.count(UNPARSEABLE),
        "per_class": per_class,
        "confusion_matrix": {"labels": matrix_labels, "rows_true_cols_pred": matrix},
        "extracted": extracted,
    }
    return MetricResult("classification", scores, {"accuracy": correct}, details)


def _gold_label(ref: str, classes: Sequence[str], case_sensitive: bool, index: int) -> str:
    ref = str(ref).strip()
    for c in classes:
        if c == ref or (not case_sensitive and c.casefold() == ref.casefold()):
            return c
    raise DataError(f"reference {index}: label {ref!r} is not in the label set ({', '.join(classes)})")


# --------------------------------------------------------------------------- registry
# Metrics over (predictions, references). `loss`/`perplexity` need the model, `judge` an endpoint and `reward`
# the reward sources, so they live in eval/perplexity.py, scoring/judge.py and scoring/rewards.py and are
# dispatched by the evaluation runner, not listed here.

METRICS: dict[str, Callable[..., MetricResult]] = {
    "exact_match": exact_match,
    "f1": f1,
    "rouge": rouge,
    "bleu": bleu,
    "chrf": chrf,
    "json": json_fields,
    "classification": classification,
}
