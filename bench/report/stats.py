"""The statistics of the tables: t confidence intervals, paired tests, Holm's correction, ranks.

Seeds are the unit of replication: a run's test metric is one observation per seed. Intervals
are Student-t intervals of the mean over seeds; comparisons pair two methods' runs by seed (the
same seed gives both the same data order and initialisation stream) and use ``scipy.stats``'s
paired t-test; the p-values of one table are Holm-corrected together.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

ALPHA = 0.05
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and the half-width of its ``CONFIDENCE`` t-interval (NaN when
    ``n < 2``), plus the standard deviation."""

    mean: float
    half: float
    n: int
    std: float


@cache
def t_quantile(confidence: float, dof: int) -> float:
    """``t_{(1+c)/2, dof}``, scipy.stats' Student-t quantile (cached: a table asks for the same
    few degrees of freedom over and over)."""
    from scipy import stats

    return float(stats.t.ppf((1 + confidence) / 2, dof))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t_{(1+c)/2, n−1} · s / √n over ``values`` (one per seed)."""
    n = len(values)
    try:
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if n >= 2 else math.nan
    except (OverflowError, ValueError):  # e.g. 1e308-sized values: a nan cell, not a crash
        return Interval(math.nan, math.nan, n, math.nan)
    if n < 2 or not math.isfinite(std):
        return Interval(mean, math.nan, n, std)
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return Interval(mean, half, n, std)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of ``scipy.stats.ttest_rel(a, b)`` (``a[i]``, ``b[i]``: one seed).

    Identical pairs give p = 1; differences that are all equal and non-zero (no spread: the
    t statistic is infinite) give p = 0; fewer than two pairs give NaN (no test)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples of different sizes ({len(a)} and {len(b)})")
    if len(a) < 2:
        return math.nan
    diffs = [x - y for x, y in zip(a, b)]
    if all(d == diffs[0] for d in diffs):
        return 1.0 if diffs[0] == 0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given; NaN stays NaN.

    Sorted ascending, the i-th smallest of m p-values becomes ``max_{j<=i} min(1, (m−j) p_(j))``
    (0-based j): rejecting where the adjusted value is below α controls the family-wise error
    rate at α."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(order)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def ranks(scores: Sequence[float], higher_is_better: bool) -> list[float]:
    """1 = best; ties share their mean rank (``scipy.stats.rankdata``)."""
    from scipy import stats

    signed = [-s if higher_is_better else s for s in scores]
    return [float(r) for r in stats.rankdata(signed, method="average")]
