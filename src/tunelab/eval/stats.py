"""Paired bootstrap confidence intervals and flipped examples for two models scored on the same examples.

The bootstrap resamples example indices (the same indices for both models, hence "paired") and takes the
percentile interval of the mean difference B - A. It is seeded (numpy Generator) so a report is
reproducible, and resamples in chunks so 10,000 resamples of a large eval set stay within memory.
Examples whose score is NaN in either list (a failed judge call) are left out and counted in `n_missing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK = 1000


@dataclass(frozen=True)
class BootstrapResult:
    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    ci_low: float
    ci_high: float
    n: int
    n_missing: int = 0
    confidence: float = 0.95

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.ci_low > 0 or self.ci_high < 0


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired scores need two lists of the same length, got {len(x)} and {len(y)}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep], int((~keep).sum())


def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(values)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        out[start : start + size] = values[rng.integers(0, n, size=(size, n))].mean(axis=1)
    return out


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10000, seed: int = 0, confidence: float = 0.95
) -> BootstrapResult:
    """Percentile CI of mean(b) - mean(a) over resampled examples."""
    x, y, missing = _paired(a, b)
    if len(x) == 0:
        nan = float("nan")
        return BootstrapResult(nan, nan, nan, nan, nan, 0, missing, confidence)
    means = _resampled_means(y - x, n_resamples, seed)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return BootstrapResult(
        float(x.mean()), float(y.mean()), float((y - x).mean()), float(low), float(high), len(x), missing, confidence
    )


def bootstrap_mean_ci(
    values: Sequence[float], *, n_resamples: int = 10000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of one model's mean score (used for the error bars of metric bars)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    low, high = np.quantile(_resampled_means(x, n_resamples, seed), [alpha, 1 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class Flips:
    improved: list[int]  # indices where B scores higher than A
    regressed: list[int]  # indices where B scores lower than A


def flipped(a: Sequence[float], b: Sequence[float], *, min_delta: float = 0.0) -> Flips:
    """Examples whose score changed by more than `min_delta` (NaN pairs are neither)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need two lists of the same length, got {len(a)} and {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = y - x
    improved = np.flatnonzero(d > min_delta)
    regressed = np.flatnonzero(d < -min_delta)
    # Largest changes first: those are the examples worth reading.
    improved = improved[np.argsort(-d[improved], kind="stable")]
    regressed = regressed[np.argsort(d[regressed], kind="stable")]
    return Flips([int(i) for i in improved], [int(i) for i in regressed])
