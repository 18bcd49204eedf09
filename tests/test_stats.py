"""Intervals of the findings against closed forms and simulation."""

import math

import numpy as np
import pytest

from knnlm_limits import findings, stats


def test_t_interval_by_hand():
    values = [1.0, 2.0, 4.0]
    mean, low, high = stats.t_interval(values)
    half = 4.303 * np.std(values, ddof=1) / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half))
    assert all(math.isnan(v) for v in stats.t_interval([1.0])[1:])


def test_t_critical_values_beyond_the_table():
    # exact two-sided 95% quantiles of Student's t
    for df, exact in ((40, 2.0211), (60, 2.0003), (120, 1.9799), (1000, 1.9623)):
        assert stats.t_critical(df) == pytest.approx(exact, abs=1e-3)
    assert stats.t_critical(1) == 12.706


def test_t_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = sum(low <= 3.0 <= high for low, high in
               (stats.t_interval(rng.normal(3.0, 2.0, size=4))[1:] for _ in range(4000)))
    assert 0.94 < hits / 4000 < 0.96


def test_bootstrap_ci_of_a_mean_matches_the_normal_interval():
    """The percentile interval of a mean of 2,000 normal values is the normal one, each end
    within 4% of the half-width. At 20,000 resamples an end's Monte Carlo error is 1% (here
    0.7% and 1.8% off); a 94% interval is 4% narrower, a 91% one 13.5% (the ±15% this test
    allowed at 2,000 resamples let the 91% one through)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, size=2000)
    point, low, high = stats.bootstrap_ci(x[:, None], lambda m: m[..., 0], n_resamples=20_000, seed=0)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert point == pytest.approx(x.mean())
    assert low == pytest.approx(point - half, abs=0.04 * half) and high == pytest.approx(point + half, abs=0.04 * half)


def test_bootstrap_keeps_columns_paired():
    """Two identical columns differ by exactly 0 in every resample."""
    x = np.random.default_rng(2).normal(size=300)
    point, low, high = stats.bootstrap_ci(np.column_stack([x, x]), lambda m: m[..., 0] - m[..., 1], 500, 0)
    assert point == low == high == 0.0


def test_projection_gap_by_hand():
    means = np.log(np.array([1 / 20.13, 1 / 16.92, 1 / 16.70]))  # mean log-probs giving the paper's perplexities
    assert findings._gap(means) == pytest.approx((16.70 - 16.92) / (20.13 - 16.92), abs=1e-9)
