"""The findings' intervals against independent truth: exact Student t quantiles, statistics
whose paired interval is known in advance (a constant in every resample), normal intervals
of the delta method, and coverage of a known value over simulated data sets.

`low <= estimate <= high` alone lets through an unpaired bootstrap, the wrong statistic
inside the resamples and an infinite interval; each check here fails on those.
"""

import math

import numpy as np
import pandas as pd
import pytest

from knnlm_limits import findings, inspection, memory, stats

# ---------------------------------------------------------------- Student t, exactly


def _t_cdf(x: float, df: int, panels: int = 2000) -> float:
    """P(T <= x), x >= 0, by Simpson's rule on the density (error far below 1e-12 here)."""
    t = np.linspace(0.0, x, 2 * panels + 1)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
    h = x / (2 * panels)
    return 0.5 + h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())


def exact_t_quantile(df: int, p: float = 0.975) -> float:
    low, high = 0.0, 20.0
    for _ in range(80):  # bisection to below 1e-15
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


Z = 1.959963984540054  # the normal 97.5% quantile


def _cornish_fisher_term(order: int, df: int) -> float:
    """The df^-order term of the Cornish-Fisher expansion of t's quantile (Abramowitz and
    Stegun 26.7.5), for orders 3 and 4: the terms after the two t_critical sums."""
    numerator = {3: 3 * Z**7 + 19 * Z**5 + 17 * Z**3 - 15 * Z,
                 4: 79 * Z**9 + 776 * Z**7 + 1482 * Z**5 - 1920 * Z**3 - 945 * Z}[order]
    return numerator / ({3: 384, 4: 92160}[order] * df**order)


@pytest.mark.parametrize("df", range(1, 31))
def test_t_critical_table_is_the_exact_quantile_to_its_three_decimals(df):
    assert abs(stats.t_critical(df) - exact_t_quantile(df)) <= 5e-4


@pytest.mark.parametrize("df", [31, 35, 40, 60, 100, 120, 1000])
def test_t_critical_beyond_the_table_is_the_two_term_expansion(df):
    """Beyond df 30, t_critical is the normal quantile plus the df^-1 and df^-2 terms: the
    exact quantile minus the df^-3 term is held to it within twice the df^-4 term (the
    residual is that term, 1.7e-6 at df 31) and 2e-8 for z written to 7 digits. A wrong
    coefficient in the df^-2 term moves it 2e-5 or more at df 31, and any at df 1,000."""
    got = stats.t_critical(df)
    expected = exact_t_quantile(df) - _cornish_fisher_term(3, df)
    assert abs(got - expected) <= 2 * _cornish_fisher_term(4, df) + 2e-8


def test_t_interval_of_two_values_and_of_float32_values():
    """Two values have an interval (df 1: 12.706 x s / sqrt(2)); float32 per-seed values are
    summarised in float64, exactly as their float64 values are."""
    assert stats.t_interval([1.0, 3.0]) == pytest.approx((2.0, 2.0 - 12.706, 2.0 + 12.706))
    values = np.array([0.1, 0.2, 0.7, 0.35], dtype=np.float32)
    assert stats.t_interval(values) == stats.t_interval(values.astype(np.float64))


# ---------------------------------------------------------------- the paired bootstrap


def test_bootstrap_means_in_chunks_are_the_resamples_drawn_at_once():
    """Chunks bound memory only: 1,000 resamples drawn 7 at a time (max_cells 7 x 100; the last
    chunk 6) are the 1,000 drawn at once, row for row, and there are exactly 1,000."""
    columns = np.random.default_rng(0).normal(size=(100, 2))
    whole = stats.bootstrap_means(columns, 1000, seed=4, max_cells=10**9)
    chunked = stats.bootstrap_means(columns, 1000, seed=4, max_cells=7 * 100)
    assert whole.shape == chunked.shape == (1000, 2)
    np.testing.assert_array_equal(chunked, whole)


def test_float32_columns_are_bootstrapped_in_float64():
    columns = np.random.default_rng(1).normal(size=(500, 2)).astype(np.float32)
    diff = lambda m: m[..., 0] - m[..., 1]  # noqa: E731
    np.testing.assert_array_equal(stats.bootstrap_means(columns, 300, 2), stats.bootstrap_means(columns.astype(np.float64), 300, 2))
    assert stats.bootstrap_ci(columns, diff, 300, 2) == stats.bootstrap_ci(columns.astype(np.float64), diff, 300, 2)


def test_a_paired_difference_is_the_bootstrap_of_the_differences():
    """Resampling rows keeps the columns paired, so the interval of mean(x) - mean(y) is the
    interval of mean(x - y) resampled with the same rows; and x against x + c gives the
    constant c in every resample. Resampled apart, the columns (correlated 0.95 here) would
    give an interval three times wider than the paired one."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=400)
    y = 0.95 * x + 0.3 * rng.normal(size=400) + 0.1
    paired = stats.bootstrap_ci(np.column_stack([x, y]), lambda m: m[..., 0] - m[..., 1], 1000, 5)
    of_differences = stats.bootstrap_ci((x - y)[:, None], lambda m: m[..., 0], 1000, 5)
    assert paired == pytest.approx(of_differences, rel=1e-9, abs=1e-12)
    point, low, high = stats.bootstrap_ci(np.column_stack([x, x + 0.25]), lambda m: m[..., 1] - m[..., 0], 500, 6)
    assert point == pytest.approx(0.25, abs=1e-12) and low == pytest.approx(0.25, abs=1e-12)
    assert high == pytest.approx(0.25, abs=1e-12)


def test_a_paired_difference_covers_its_true_value_95_percent_of_the_time():
    """1,000 data sets of 100 correlated pairs with a known difference of means: the
    percentile interval covers it 93.7% of the time here (the Monte Carlo standard error is
    0.7%; the percentile bootstrap of a mean of 100 covers 94.6% in theory), held to
    [0.92, 0.97]. A 91% interval covers ~0.90, an interval of the columns resampled apart
    (3x wider) ~1.0, an infinite one 1.0."""
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(1000):
        x = rng.normal(1.0, 1.0, size=100)
        y = 0.95 * x + rng.normal(0.0, 0.3, size=100)  # E[x - y] = 0.05
        _, low, high = stats.bootstrap_ci(np.column_stack([x, y]), lambda m: m[..., 0] - m[..., 1], 500,
                                          int(rng.integers(2**31)))
        hits += low <= 0.05 <= high
    assert 0.92 <= hits / 1000 <= 0.97


# ---------------------------------------------------------------- where retrieval helps


def _gain_table(rng, n, rare_gain, frequent_gain):
    """Tokens in the rare (1-99), frequent (1,000+) and other buckets with the given gains."""
    counts = rng.choice([0, 5, 50, 500, 2000, 50_000], size=n, p=[0.1, 0.2, 0.2, 0.1, 0.2, 0.2])
    rare, frequent = (counts >= 1) & (counts < 100), counts >= 1000
    gain = np.where(rare, rare_gain, np.where(frequent, frequent_gain, rng.normal(3.0, 1.0, n)))
    return pd.DataFrame({"train_count": counts, "gain": gain})


def test_rare_minus_frequent_of_constant_gains_is_that_constant_in_every_resample():
    """Every rare token gains 2.0 and every frequent one 0.5: each resample's two group means
    are 2.0 and 0.5, so the interval is [1.5, 1.5]. With the groups' sums and counts
    resampled apart, or the wrong ratio taken, it is not."""
    tokens = _gain_table(np.random.default_rng(3), 300, 2.0, 0.5)
    point, low, high = inspection.rare_minus_frequent(tokens, n_resamples=400, seed=1)
    assert (point, low, high) == pytest.approx((1.5, 1.5, 1.5), abs=1e-12)


def test_rare_minus_frequent_covers_the_true_difference():
    """Gains drawn around 1.0 (rare) and 0.2 (frequent), 400 data sets of 150 tokens: the
    interval covers 0.8 95.25% of the time here (Monte Carlo standard error 1.1%), held to
    [0.9, 0.98]; the other buckets' gains (around 3.0) inside a group would move it off."""
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(400):
        tokens = _gain_table(rng, 150, 0.0, 0.0)
        rare = (tokens.train_count >= 1) & (tokens.train_count < 100)
        frequent = tokens.train_count >= 1000
        tokens.loc[rare, "gain"] = rng.normal(1.0, 1.0, rare.sum())
        tokens.loc[frequent, "gain"] = rng.normal(0.2, 0.5, frequent.sum())
        _, low, high = inspection.rare_minus_frequent(tokens, n_resamples=400, seed=int(rng.integers(2**31)))
        hits += low <= 0.8 <= high
    assert 0.9 <= hits / 400 <= 0.98


def _delta_method_half_width(a: np.ndarray, b: np.ndarray) -> float:
    """1.96 x the delta-method standard error of exp(-mean a) - exp(-mean b), a and b paired."""
    gradient = np.array([-np.exp(-a.mean()), np.exp(-b.mean())])
    return 1.96 * math.sqrt(gradient @ np.cov(np.vstack([a, b])) @ gradient / len(a))


def test_approximate_minus_exact_is_the_paired_delta_method_interval():
    """The perplexity difference with approximate minus exact neighbours, on 3,000 paired
    tokens: its interval is the delta method's (half-width within 6%, 0.964 of it here: the
    endpoints' Monte Carlo error at 4,000 resamples is 1.5% each), centred on the point. Resampled apart the
    columns (correlated 0.98) give 5x the width; a 91% interval is 13% narrower. Identical
    columns: [0, 0]."""
    rng = np.random.default_rng(5)
    exact = np.log(rng.uniform(0.05, 0.6, 3000))
    approximate = exact - 0.02 + 0.05 * rng.normal(size=3000)
    table = pd.DataFrame({"knnlm_logprob_approximate": approximate, "knnlm_logprob_exact": exact})
    point, low, high = inspection.approximate_minus_exact(table, 4000, 0)
    assert point == pytest.approx(np.exp(-approximate.mean()) - np.exp(-exact.mean()), rel=1e-12)
    half = _delta_method_half_width(approximate, exact)
    assert (high - low) / 2 == pytest.approx(half, rel=0.06)
    assert (low + high) / 2 == pytest.approx(point, abs=0.1 * half)
    same = table.assign(knnlm_logprob_approximate=exact)
    assert inspection.approximate_minus_exact(same, 300, 0) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


# ---------------------------------------------------------------- Table 1 and the memory


def _summary():
    return pd.DataFrame([{"projection": name, "column": column, "direction": "paper", "solver": "adam",
                          "iterations": 10, "final_mean_kl": 0.1, "converged": True}
                         for name, column in (("f", "proj_f"), ("f∘g", "proj_fg"), ("r", "proj_f_reverse"))])


def test_table1_gaps_at_their_two_anchors_and_the_perplexity_difference():
    """gap = 0 where the projection is the kNN-LM, token for token, and 1 where it is the LM:
    in every paired resample, so the intervals are [0, 0] and [1, 1] (they are not when the
    columns are resampled apart). knnlm_beats_lm is the delta method's interval of
    ppl_lm - ppl_knnlm over 3,000 paired tokens (6%, 0.985 of it here: Monte Carlo error
    1.5% an endpoint; the columns resampled apart, correlated 0.76, are 2x wider)."""
    rng = np.random.default_rng(9)
    lm = np.log(rng.uniform(0.02, 0.5, 3000))
    knnlm = np.logaddexp(np.log(0.75) + lm, np.log(0.25) + np.log(rng.uniform(0.0, 1.0, 3000)))
    per_token = pd.DataFrame({"lm": lm, "knnlm": knnlm, "proj_f": knnlm, "proj_fg": lm,
                              "proj_f_reverse": 0.5 * (lm + knnlm)})
    rows = {r["finding"]: r for r in findings.table1(per_token, lm, knnlm, _summary(), {}, "fixed", 4000, 0)}
    f, fg = rows["softmax_bottleneck_ruled_out"], rows["mlp_hurdle_in_projection"]
    assert (f["measured"], f["ci_low"], f["ci_high"]) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    assert (fg["measured"], fg["ci_low"], fg["ci_high"]) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)
    assert f["holds"] and fg["holds"]
    beats = rows["knnlm_beats_lm"]
    assert beats["measured"] == pytest.approx(np.exp(-lm.mean()) - np.exp(-knnlm.mean()), rel=1e-12)
    assert (beats["ci_high"] - beats["ci_low"]) / 2 == pytest.approx(_delta_method_half_width(lm, knnlm), rel=0.06)
    convex = rows["softmax_bottleneck_ruled_out_convex"]
    assert 0 < convex["ci_low"] <= convex["measured"] <= convex["ci_high"] < 1


def _memory_inputs(mix_is: str, rng, n=400):
    lm = np.log(rng.uniform(0.02, 0.5, n))
    knnlm = {s: lm + rng.uniform(0.0, 0.6, n) for s in ("fixed", "tuned")}
    mix = {"lm": {s: lm for s in ("fixed", "tuned")}, "knnlm": knnlm}[mix_is]
    tokens = pd.DataFrame({"lm": lm, "knnlm_fixed": knnlm["fixed"], "knnlm_tuned": knnlm["tuned"],
                           "lm_memory_x": mix["tuned"], "lm_memory_x_fixed": mix["fixed"],
                           "memory_x": np.log(rng.uniform(0.02, 0.5, n))})
    table = pd.DataFrame([{"kind": "knn", "component": "kNN-LM", "bytes": 10_000},
                          {"kind": "memory", "component": "LM + memory x", "bytes": 400, "train_flops": 1e9,
                           "target_search_flops": 5e8}])
    return tokens, table


@pytest.mark.parametrize("mix_is, recovered", [("knnlm", 1.0), ("lm", 0.0)])
def test_memory_recovers_all_or_none_of_the_gain_in_every_resample(mix_is, recovered):
    """LM + memory equal to the kNN-LM, token for token, recovers all of its gain (1) in every
    paired resample; equal to the LM, none (0): intervals [1, 1] and [0, 0], at the fixed and
    at the tuned setting."""
    tokens, table = _memory_inputs(mix_is, np.random.default_rng(4))
    rows = [r for r in findings.memory(tokens, table, "x", None, "lm", {}, 300, 0)
            if r["finding"] == "memory_recovers_knn_gain"]
    assert len(rows) == 2
    for row in rows:
        assert (row["measured"], row["ci_low"], row["ci_high"]) == pytest.approx((recovered,) * 3, abs=1e-12)


def test_bootstrap_perplexity_is_the_delta_method_interval():
    """exp(-mean log p) over 3,000 tokens: half-width 1.96 x exp(-mean) x s / sqrt(n) within
    6% (1.012 of it here; Monte Carlo error 1.5% an endpoint at 4,000 resamples; a 91%
    interval is 13% off)."""
    logprobs = np.log(np.random.default_rng(6).uniform(0.01, 0.6, 3000))
    point, low, high = memory.bootstrap_perplexity(logprobs, 4000, 0)
    assert point == pytest.approx(np.exp(-logprobs.mean()), rel=1e-12)
    half = 1.96 * np.exp(-logprobs.mean()) * logprobs.std(ddof=1) / math.sqrt(len(logprobs))
    assert (high - low) / 2 == pytest.approx(half, rel=0.06)
