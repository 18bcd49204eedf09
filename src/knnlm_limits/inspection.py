"""Looking inside the kNN-LM: where retrieval helps, read from what the search stored.

Per test position the gain is log p_knnlm(target) - log p_lm(target) at the
interpolation Table 1 uses (knn.lambda, knn.temperature). Targets are grouped by
how often they occur in the training split (the datastore's values, before the
cap on training tokens nothing else sees): Khandelwal et al. (2020) read the
kNN-LM's gain as concentrated in rare tokens. Each bucket's mean gain has a
percentile-bootstrap 95% interval over its own tokens; the finding compares rare
targets (seen 1 to 99 times) with frequent ones (seen 1,000 times or more).
Targets never seen in training cannot be retrieved and form their own bucket.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import knnlm
from .stats import bootstrap_ci

# A bucket holds the targets seen in training [low, high) times.
BUCKETS = ((0, 1), (1, 10), (10, 100), (100, 1_000), (1_000, 10_000), (10_000, None))
RARE, FREQUENT = (1, 100), (1_000, None)


def bucket_label(low: int, high: int | None) -> str:
    if (low, high) == (0, 1):
        return "unseen"
    return f"{low:,}+" if high is None else f"{low:,}-{high - 1:,}"


def _in(counts: np.ndarray, low: int, high: int | None) -> np.ndarray:
    return (counts >= low) & (counts < high) if high is not None else counts >= low


def token_counts(stream: np.ndarray, vocab_size: int, chunk: int = 2**24) -> np.ndarray:
    """How often each token id occurs in `stream`, counted a chunk at a time (bincount widens
    its input to int64: a whole training split at once would double its memory)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(stream), chunk):
        part = np.bincount(stream[start : start + chunk], minlength=vocab_size)
        counts[: len(part)] += part[:vocab_size]
    return counts


def per_token(found: knnlm.SearchResults, train_tokens: np.ndarray, lam: float, temperature: float) -> pd.DataFrame:
    """One row per evaluated test position: its target, how often the training split has it,
    its bucket, log p_lm, log p_knnlm and the gain."""
    targets = np.asarray(found.targets, dtype=np.int64)
    seen = token_counts(train_tokens, int(targets.max()) + 1)[targets]
    lm = found.lm_logprob.astype(np.float64)
    mixed = knnlm.knnlm_logprob(found, lam, temperature)
    bucket = np.empty(len(targets), dtype=object)
    for low, high in BUCKETS:
        bucket[_in(seen, low, high)] = bucket_label(low, high)
    return pd.DataFrame({"position": np.arange(len(targets)), "target": targets, "train_count": seen,
                         "bucket": bucket, "lm_logprob": lm, "knnlm_logprob": mixed, "gain": mixed - lm})


def by_bucket(tokens: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each bucket's share of the tokens and mean gain with its 95% bootstrap interval."""
    rows = []
    for low, high in BUCKETS:
        gain = tokens.gain.to_numpy()[_in(tokens.train_count.to_numpy(), low, high)]
        mean, ci_low, ci_high = (bootstrap_ci(gain[:, None], lambda m: m[..., 0], n_resamples, seed)
                                 if len(gain) else (np.nan, np.nan, np.nan))
        rows.append({"bucket": bucket_label(low, high), "min_count": low, "max_count": None if high is None else high - 1,
                     "tokens": len(gain), "share": len(gain) / len(tokens), "mean_gain": mean,
                     "ci_low": ci_low, "ci_high": ci_high})
    return pd.DataFrame(rows)


def rare_minus_frequent(tokens: pd.DataFrame, n_resamples: int = 2000, seed: int = 0):
    """(mean gain on rare targets - mean gain on frequent ones, 95% CI), one paired bootstrap
    over all tokens (each resample's two group means)."""
    counts, gain = tokens.train_count.to_numpy(), tokens.gain.to_numpy()
    rare, frequent = _in(counts, *RARE).astype(float), _in(counts, *FREQUENT).astype(float)
    if not rare.any() or not frequent.any():
        return np.nan, np.nan, np.nan
    columns = np.column_stack([gain * rare, rare, gain * frequent, frequent])
    with np.errstate(invalid="ignore", divide="ignore"):
        return bootstrap_ci(columns, lambda m: m[..., 0] / m[..., 1] - m[..., 2] / m[..., 3], n_resamples, seed)
