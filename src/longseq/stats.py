"""Paired differences with confidence intervals, for comparing two methods on the same
prompts (or seeds, or documents): the per-item differences carry the comparison, so
variation between items that both methods share drops out.

    d = paired_difference(cam_apm_ratios, naive_ratios)      # a - b per prompt
    d.mean, d.low, d.high, d.n, d.excludes_zero

The t-interval needs no SciPy: Student's t quantile comes from the regularized
incomplete beta function (:func:`t_quantile`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("t", "bootstrap")


@dataclass(frozen=True)
class PairedDifference:
    """The mean of the paired differences ``a - b``, its confidence interval
    ``[low, high]``, the number ``n`` of pairs used, and whether the interval excludes 0
    (the difference is significant at that confidence)."""

    mean: float
    low: float
    high: float
    n: int
    excludes_zero: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "excludes_zero", bool(self.low > 0 or self.high < 0))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function with ``df`` degrees of freedom at ``t``."""
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom, by
    bisection on :func:`t_cdf` (to about 1e-12)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    method: str = "t",
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """Mean of the paired differences ``a[i] - b[i]`` with a ``confidence`` interval.

    Pairs where either value is not finite (NaN, inf) are left out; at least 2 must remain.
    ``method``:

    - ``"t"``: ``mean +- t_{n-1, (1 + confidence) / 2} * sd / sqrt(n)``, with ``sd`` the
      standard deviation of the differences (n - 1 in the denominator);
    - ``"bootstrap"``: the percentile bootstrap: the ``(1 - confidence) / 2`` and
      ``(1 + confidence) / 2`` quantiles (numpy's linear interpolation) of the means of
      ``n_boot`` resamples of the differences, drawn with replacement from ``seed``.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b must be 1-D of one length, got shapes {x.shape} and {y.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    n = len(d)
    if n < 2:
        raise ValueError(f"need at least 2 pairs with finite values, got {n} of {len(x)}")
    mean = float(d.mean())
    if method == "t":
        half = t_quantile((1 + confidence) / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
        return PairedDifference(mean, mean - half, mean + half, n)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, (int(n_boot), n))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PairedDifference(mean, float(low), float(high), n)


def paired_differences(
    rows_a: Sequence[Mapping[str, float]],
    rows_b: Sequence[Mapping[str, float]],
    keys: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, PairedDifference]:
    """:func:`paired_difference` of each metric over paired rows (row i of both from the
    same prompt), e.g. lists of ``video_metrics`` dicts. ``keys`` default to the metrics
    every row has; other keyword arguments go to :func:`paired_difference`."""
    if len(rows_a) != len(rows_b):
        raise ValueError(f"rows must pair up: {len(rows_a)} against {len(rows_b)}")
    if keys is None:
        keys = [k for k in rows_a[0] if all(k in r for r in (*rows_a, *rows_b))] if rows_a else []
    return {
        k: paired_difference([r[k] for r in rows_a], [r[k] for r in rows_b], **kwargs) for k in keys
    }


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> dict:
    """Mean of independent values (e.g. one per seed) with its t-interval:
    ``{"mean", "low", "high", "n"}``; low and high are NaN for fewer than 2 values."""
    v = [float(x) for x in values]
    n = len(v)
    m = statistics.mean(v)
    if n < 2:
        return {"mean": m, "low": math.nan, "high": math.nan, "n": n}
    half = t_quantile((1 + confidence) / 2, n - 1) * statistics.stdev(v) / math.sqrt(n)
    return {"mean": m, "low": m - half, "high": m + half, "n": n}
