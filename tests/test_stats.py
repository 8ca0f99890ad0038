"""Paired differences: the t quantile against SciPy and printed tables, the intervals
against a hand computation and SciPy's paired t-test, the bootstrap against a direct loop."""

import dataclasses
import math

import numpy as np
import pytest

from longseq.stats import (
    PairedDifference,
    paired_difference,
    paired_differences,
    t_cdf,
    t_quantile,
)

# two-sided 95% critical values from a printed t table
T_TABLE_975 = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 15: 2.131, 30: 2.042}


@pytest.mark.parametrize(("df", "value"), sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_printed_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=5e-4)


def test_t_quantile_limits_and_cdf_round_trip():
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    assert t_quantile(0.975, 10_000) == pytest.approx(1.95996, abs=1e-3)  # the normal's
    # df = 1 is the Cauchy distribution: quantile tan(pi (p - 1/2))
    for p in (0.6, 0.9, 0.99):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    for df in (1, 3.5, 12):
        for t in (-4.0, -0.3, 0.0, 1.7, 6.0):
            assert t_quantile(t_cdf(t, df), df) == pytest.approx(t, abs=1e-8)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 9, 15, 31, 200, 0.7):
        for p in (0.51, 0.8, 0.95, 0.975, 0.995, 0.9999, 0.03):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-9)


def test_t_interval_by_hand():
    a = [3.0, 5.0, 4.0, 6.0, 7.0]
    b = [1.0, 2.0, 2.0, 4.0, 6.0]  # differences 2, 3, 2, 2, 1: mean 2, sd sqrt(0.5)
    d = paired_difference(a, b)
    half = 2.776445 * math.sqrt(0.5) / math.sqrt(5)
    assert (d.mean, d.n) == (2.0, 5)
    assert d.low == pytest.approx(2 - half, abs=1e-5)
    assert d.high == pytest.approx(2 + half, abs=1e-5)
    assert d.excludes_zero
    wider = paired_difference(a, b, confidence=0.99)
    assert wider.low < d.low and wider.high > d.high


def test_t_interval_matches_scipy_paired_test():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=16), rng.normal(0.3, 1, size=16)
    d = paired_difference(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_bootstrap_is_the_percentile_interval_of_resampled_means():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1, 20), rng.normal(0.0, 1, 20)
    d = paired_difference(a, b, method="bootstrap", n_boot=2000, seed=5)
    # the same resamples, drawn one by one
    g = np.random.default_rng(5)
    idx = g.integers(0, 20, (2000, 20))
    means = [np.mean((a - b)[row]) for row in idx]
    assert (d.low, d.high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    t = paired_difference(a, b)
    assert d.mean == t.mean and abs(d.low - t.low) < 0.25 and abs(d.high - t.high) < 0.25


def test_excludes_zero_follows_the_interval_and_is_in_asdict():
    assert not PairedDifference(0.5, -0.1, 1.0, 4).excludes_zero
    assert PairedDifference(-0.5, -1.0, -0.1, 4).excludes_zero
    assert dataclasses.asdict(PairedDifference(0.5, 0.1, 1.0, 4))["excludes_zero"] is True
    same = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.mean, same.low, same.high, same.excludes_zero) == (0.0, 0.0, 0.0, False)


def test_non_finite_pairs_are_left_out():
    a = [1.0, np.nan, 3.0, 4.0, np.inf]
    b = [0.0, 1.0, 1.0, 1.0, 1.0]
    d = paired_difference(a, b)
    assert d.n == 3 and d.mean == pytest.approx(2.0)


def test_paired_differences_of_metric_rows():
    rows_a = [
        {"x": 1.0, "y": 2.0, "only_a": 0.0},
        {"x": 2.0, "y": 2.5, "only_a": 0.0},
        {"x": 4.0, "y": 3.0, "only_a": 1.0},
    ]
    rows_b = [{"x": 0.0, "y": 2.0}, {"x": 1.0, "y": 2.0}, {"x": 2.0, "y": 2.0}]
    out = paired_differences(rows_a, rows_b)
    assert set(out) == {"x", "y"}
    assert out["x"] == paired_difference([1, 2, 4], [0, 1, 2])
    assert paired_differences(rows_a, rows_b, keys=["y"], confidence=0.9)[
        "y"
    ].mean == pytest.approx(0.5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="one length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_difference([1.0, np.nan], [0.0, 0.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [0.0, 0.0], confidence=95)
    with pytest.raises(ValueError, match="method"):
        paired_difference([1.0, 2.0], [0.0, 0.0], method="z")
    with pytest.raises(ValueError, match="n_boot"):
        paired_difference([1.0, 2.0], [0.0, 0.0], method="bootstrap", n_boot=10)
    with pytest.raises(ValueError, match="pair up"):
        paired_differences([{"x": 1.0}], [])
    with pytest.raises(ValueError, match="p must"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df must"):
        t_quantile(0.9, 0)


def test_mean_interval_is_the_t_interval_of_the_mean():
    from longseq.stats import mean_interval

    r = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert r["n"] == 3 and r["mean"] == pytest.approx(2.0)
    assert (r["low"], r["high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    one = mean_interval([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["low"]) and math.isnan(one["high"])
