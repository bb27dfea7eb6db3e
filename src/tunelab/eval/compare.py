"""Compare two evaluations of the same examples with the same decoding: A (baseline) vs B (fine-tuned).

For every per-example score key both results have (exact_match, f1, rouge1, bleu, accuracy, loss, ...):
both means, the difference B - A with a paired bootstrap 95% CI, significance (the CI excludes 0), and
the examples that flipped. The table uses means of per-example scores throughout, so value, difference
and CI agree (for BLEU/chrF that is the mean sentence score, not the corpus score; see metrics.py).
For loss and perplexity lower is better, so "improved" means the loss went down.

Comparing results of different examples, or generated with different decoding, is refused: the
difference would not be the model's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.eval.runner import EvalResult
from tunelab.eval.stats import bootstrap_mean_ci, flipped, paired_bootstrap

LOWER_IS_BETTER = {"loss"}


@dataclass
class MetricComparison:
    metric: str  # the metric that produced the key (rouge)
    key: str  # the score compared (rougeL)
    value_a: float
    value_b: float
    diff: float  # value_b - value_a
    ci_low: float
    ci_high: float
    significant: bool
    n: int
    n_missing: int
    higher_is_better: bool
    ci_a: tuple[float, float]  # 95% CI of each mean, for error bars
    ci_b: tuple[float, float]
    improved: list[int] = field(default_factory=list)
    regressed: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The score's name in tables: the key, prefixed by its task for a task's metric ("copy/loss")."""
        task, sep, _ = self.metric.rpartition("/")
        return f"{task}/{self.key}" if sep else self.key

    @property
    def verdict(self) -> str:
        if not self.significant:
            return "no significant difference"
        better = (self.diff > 0) == self.higher_is_better
        return "better" if better else "worse"


@dataclass
class Comparison:
    name_a: str
    name_b: str
    rows: list[MetricComparison]
    flipped: list[dict[str, Any]]  # flipped examples with inputs and outputs, for the report

    def to_dict(self) -> dict[str, Any]:
        return {"name_a": self.name_a, "name_b": self.name_b,
                "rows": [asdict(r) | {"verdict": r.verdict, "label": r.label} for r in self.rows], "flipped": self.flipped}  # fmt: skip


def check_comparable(a: EvalResult, b: EvalResult) -> None:
    if len(a.examples) != len(b.examples):
        raise TunelabError(f"cannot compare: {a.model} has {len(a.examples)} examples, {b.model} {len(b.examples)}")
    for i, (x, y) in enumerate(zip(a.examples, b.examples)):
        if x.prompt != y.prompt or x.reference != y.reference:
            raise TunelabError(f"cannot compare: example {i} differs ({x.source or i} vs {y.source or i}); "
                               "both evaluations must use the same eval data in the same order")  # fmt: skip
    shared = set(a.decoding) & set(b.decoding)  # a setting one result predates is not a difference
    diff = {k: (a.decoding[k], b.decoding[k]) for k in sorted(shared) if a.decoding[k] != b.decoding[k]}
    if diff:
        raise TunelabError(f"cannot compare: decoding differs {diff}; evaluate both with the same eval settings")


def compare_results(a: EvalResult, b: EvalResult, *, n_resamples: int = 10000, seed: int = 0,
                    max_flipped: int = 10) -> Comparison:  # fmt: skip
    """Every shared per-example score of `a` and `b`, compared with a paired bootstrap."""
    check_comparable(a, b)
    rows = []
    for metric in a.metrics:
        if metric not in b.metrics:
            continue
        for key, scores_a in a.metrics[metric].per_example.items():
            scores_b = b.metrics[metric].per_example.get(key)
            if scores_b is not None:
                row = _compare_key(metric, key, scores_a, scores_b, n_resamples, seed)
                if "examples" in a.metrics[metric].details:  # a task's metric: only its examples can be missing
                    row.n_missing = a.metrics[metric].details["examples"] - row.n
                rows.append(row)
    return Comparison(a.model, b.model, rows, _flipped_examples(a, b, rows, max_flipped))


def _compare_key(
    metric: str, key: str, a: list[float], b: list[float], n_resamples: int, seed: int
) -> MetricComparison:
    boot = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
    higher = key not in LOWER_IS_BETTER
    flips = flipped(a, b) if higher else flipped([-x for x in a], [-x for x in b])
    return MetricComparison(
        metric, key, boot.mean_a, boot.mean_b, boot.diff, boot.ci_low, boot.ci_high, boot.significant, boot.n,
        boot.n_missing, higher, bootstrap_mean_ci(a, n_resamples=n_resamples, seed=seed),
        bootstrap_mean_ci(b, n_resamples=n_resamples, seed=seed), flips.improved, flips.regressed,
    )  # fmt: skip


def _flipped_examples(a: EvalResult, b: EvalResult, rows: list[MetricComparison], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` improved and `limit` regressed examples per compared key, biggest changes first."""
    out = []
    for row in rows:
        sa, sb = a.metrics[row.metric].per_example[row.key], b.metrics[row.metric].per_example[row.key]
        for direction, idx in (("improved", row.improved), ("regressed", row.regressed)):
            for i in idx[:limit]:
                ex = a.examples[i]
                out.append({
                    "key": row.label, "direction": direction, "index": i, "source": ex.source, "prompt": ex.prompt,
                    "reference": ex.reference, "output_a": a.predictions[i] if a.predictions else None,
                    "output_b": b.predictions[i] if b.predictions else None,
                    "score_a": _num(sa[i]), "score_b": _num(sb[i]),
                })  # fmt: skip
    return out


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def pairwise_row(result: Any, *, n_resamples: int = 10000, seed: int = 0) -> MetricComparison:
    """A table row for a pairwise judge result (judge.compare_all): B's win rate against the 0.5 of a draw."""
    per = result.per_example["win_rate_b"]
    low, high = bootstrap_mean_ci(per, n_resamples=n_resamples, seed=seed)
    valid = [x for x in per if not np.isnan(x)]
    rate = float(np.mean(valid)) if valid else float("nan")
    return MetricComparison("judge_pairwise", "win_rate_b", 0.5, rate, rate - 0.5, low - 0.5, high - 0.5,
                            bool(low > 0.5 or high < 0.5), len(valid), len(per) - len(valid), True,
                            (0.5, 0.5), (low, high))  # fmt: skip
