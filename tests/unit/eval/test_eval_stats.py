"""Paired bootstrap against scipy's bootstrap and against cases with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tunelab.eval.stats import bootstrap_mean_ci, flipped, paired_bootstrap


def test_identical_scores_have_zero_width_ci_and_no_significance() -> None:
    a = [1.0, 0.0, 1.0, 1.0, 0.0] * 10
    r = paired_bootstrap(a, a)
    assert (r.diff, r.ci_low, r.ci_high) == (0.0, 0.0, 0.0)
    assert not r.significant


def test_clear_improvement_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    a = rng.binomial(1, 0.3, size=200).astype(float)
    b = np.where(rng.random(200) < 0.5, 1.0, a)  # b fixes about half of a's misses, never breaks
    r = paired_bootstrap(a, b, seed=3)
    assert r.diff == pytest.approx(b.mean() - a.mean())
    assert r.ci_low > 0 and r.significant


def test_noise_difference_is_not_significant() -> None:
    rng = np.random.default_rng(2)
    a = rng.binomial(1, 0.5, size=100).astype(float)
    b = rng.permutation(a)  # same mean, shuffled per example
    r = paired_bootstrap(a, b, seed=0)
    assert r.ci_low < 0 < r.ci_high and not r.significant


def test_ci_agrees_with_scipy_percentile_bootstrap() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.2, size=80)
    b = a + rng.normal(0.05, 0.1, size=80)
    ours = paired_bootstrap(a, b, n_resamples=20000, seed=5)
    ref = sps.bootstrap(((b - a),), np.mean, n_resamples=20000, method="percentile", random_state=7)
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert ours.ci_high == pytest.approx(ref.confidence_interval.high, abs=0.004)
    lo, hi = bootstrap_mean_ci(a, seed=1)
    assert lo < a.mean() < hi


def test_seed_makes_it_reproducible_and_nan_pairs_are_counted() -> None:
    a = [0.1, 0.5, 0.9, float("nan"), 0.3]
    b = [0.2, 0.4, 1.0, 0.5, float("nan")]
    r1, r2 = paired_bootstrap(a, b, seed=9), paired_bootstrap(a, b, seed=9)
    assert r1 == r2
    assert r1.n == 3 and r1.n_missing == 2
    assert r1.mean_a == pytest.approx(0.5)
    empty = paired_bootstrap([float("nan")], [1.0])
    assert empty.n == 0 and math.isnan(empty.diff) and not empty.significant
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_flipped_examples_sorted_by_size() -> None:
    f = flipped([0, 1, 0, 0.5, 1, float("nan")], [1, 0, 0, 0.9, 1, 1])
    assert f.improved == [0, 3]
    assert f.regressed == [1]
