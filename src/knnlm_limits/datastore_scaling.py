"""The datastore-size curve: the kNN-LM over the first s of N shards (knn.datastore_sizes).

The first s shards are a datastore of their own, s/N of the training windows: their answers
merged alone (knn_merge_first_shards) are its kNN-LM's neighbours, with no second search.
At each size (lambda, T) is tuned on the validation split over Table 1's grid, and test
perplexity is reported at the fixed and the tuned setting with 95% bootstrap intervals.
Khandelwal et al. (2020) found the gain over the LM growing roughly log-linearly with the
datastore, up to 3B tokens; ``gain_slope`` is that growth per doubling, one paired bootstrap
over the test tokens for every size at once.

NumPy and pandas only: the job loads no model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .knnlm import SearchResults, grid, knnlm_logprob, tuned_setting
from .memory import bootstrap_perplexity
from .stats import bootstrap_ci

COLUMNS = ["shards", "of_shards", "entries", "lambda", "temperature", "valid_ppl_tuned", "test_ppl_fixed",
           "fixed_ci_low", "fixed_ci_high", "test_ppl_tuned", "tuned_ci_low", "tuned_ci_high", "test_ppl_lm",
           "lm_ci_low", "lm_ci_high"]


def curve(sizes: list[int], of_shards: int, entries: list[int], found: dict, lambdas, temperatures,
          fixed: tuple[float, float], bootstrap: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the curve, one row a size; the per-test-token log-probs it reads).

    found: {size: {valid, test}} search results (files or SearchResults) of the datastore of
    the first `size` shards, which holds entries[i] entries. The LM's log-probs are the same
    at every size (one LM pass)."""
    def ppl_ci(logprobs):
        return bootstrap_perplexity(logprobs, bootstrap["bootstrap_resamples"], bootstrap["seed"])

    rows, tokens, lm = [], {}, None
    for size, n in zip(sizes, entries):
        valid, test = (_load(found[size][s]) for s in ("valid", "test"))
        g = grid(valid, lambdas, temperatures)
        lam, temperature = tuned_setting(g)
        if not tokens:
            tokens = {"position": np.arange(len(test)), "target": test.targets, "lm": test.lm_logprob.astype(np.float64)}
        elif not np.array_equal(tokens["target"], test.targets):
            raise ValueError(f"the datastore of {size} shards was searched for other test positions than the first's")
        tokens[f"fixed_{size}"] = knnlm_logprob(test, *fixed)
        tokens[f"tuned_{size}"] = knnlm_logprob(test, lam, temperature)
        fixed_ppl, tuned_ppl = ppl_ci(tokens[f"fixed_{size}"]), ppl_ci(tokens[f"tuned_{size}"])
        lm = lm or ppl_ci(tokens["lm"])  # one LM pass: the same at every size
        rows.append(dict(zip(COLUMNS, (size, of_shards, n, lam, temperature, float(g.perplexity.min()), *fixed_ppl,
                                       *tuned_ppl, *lm))))
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(tokens)


def _load(found) -> SearchResults:
    return found if isinstance(found, SearchResults) else SearchResults.load(found)


def slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares slope of y (..., S) against x (S,), row by row."""
    x = np.asarray(x, dtype=np.float64)
    dx = x - x.mean()
    return ((y - y.mean(axis=-1, keepdims=True)) * dx).sum(axis=-1) / (dx**2).sum()


def gain_slope(tokens: pd.DataFrame, table: pd.DataFrame, setting: str, n_resamples: int, seed: int):
    """(slope, 95% CI): the change of ppl_LM - ppl_kNN-LM per doubling of the datastore's entries
    (least squares over the sizes, at each size's `setting`: fixed or tuned), one paired bootstrap
    over the test tokens (every size's perplexity from the same resampled tokens)."""
    x = np.log2(table.entries.to_numpy(dtype=np.float64))
    columns = tokens[["lm", *(f"{setting}_{s}" for s in table.shards)]].to_numpy()

    def statistic(means):
        ppl = np.exp(-means)
        return slope(x, ppl[..., :1] - ppl[..., 1:])

    return bootstrap_ci(columns, statistic, n_resamples, seed)
