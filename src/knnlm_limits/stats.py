"""Uncertainty of the findings: a paired bootstrap over tokens, a t interval over seeds.

Over tokens, every statistic of Table 1 is a function of the mean log-probability
of a few per-token columns (a perplexity is exp(-mean)), so the bootstrap
resamples token indices once and recomputes those column means: the columns stay
paired (the same tokens in every column of a resample).

Over seeds there are few values (2 to 5); a percentile bootstrap over so few is
too narrow, so the interval is Student's t on the per-seed values.
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
# Two-sided 95% critical values of Student's t, df = 1..30 (beyond: the normal
# quantile with the Cornish-Fisher correction, within 0.001 of the exact value).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_critical(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t interval of the mean of per-seed values (NaN bounds for one value)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t_critical(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def bootstrap_means(columns: np.ndarray, n_resamples: int, seed: int, max_cells: int = 2**22) -> np.ndarray:
    """(n_resamples, C): column means of `columns` (N, C) over paired resamples of its rows."""
    columns = np.asarray(columns, dtype=np.float64)
    n = len(columns)
    rng = np.random.default_rng(seed)
    chunk = max(1, max_cells // max(n, 1))
    means = []
    for start in range(0, n_resamples, chunk):
        rows = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        means.append(columns[rows].mean(axis=1))
    return np.concatenate(means)


def bootstrap_ci(columns: np.ndarray, statistic, n_resamples: int, seed: int):
    """(point, low, high) of statistic(column means) with a 95% percentile interval.

    `statistic` maps an array (..., C) of column means to (...): it is applied to
    the full sample and, vectorised, to every resample.
    """
    columns = np.asarray(columns, dtype=np.float64)
    point = float(statistic(columns.mean(axis=0)))
    resampled = statistic(bootstrap_means(columns, n_resamples, seed))
    low, high = np.nanpercentile(resampled, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return point, float(low), float(high)
