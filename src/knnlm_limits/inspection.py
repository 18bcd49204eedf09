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


# ---------------------------------------------------------------- retrieved neighbours


def target_positions(examples, example_of_rows: np.ndarray) -> np.ndarray:
    """Where each search-result row's target sits in the examples' token array."""
    return examples.starts[np.asarray(example_of_rows)] + knnlm.target_columns(examples, example_of_rows)


def neighbours(found: knnlm.SearchResults, ids, positions, train_tokens, test, decode, lam: float,
               temperature: float, settings: dict) -> pd.DataFrame:
    """The retrieved neighbours of a seeded sample of test positions, one row each.

    `ids` are the search's (N, k) datastore rows (a memory map: only the sample's rows
    are read), `positions` the datastore's training positions, `test` the evaluated
    Examples the search results are rows of, `decode` token ids -> text. For each
    sampled position: its context (the `context_tokens` tokens before it, decoded),
    target, p_lm, p_knn, p_knnlm and the gain; for each of its `neighbours` nearest
    entries: the training context it came from, its next token, distance, weight in
    p_knn and whether it is the target. Positions with the largest |gain| come first.
    """
    chosen = knnlm.sample_rows(len(found), settings["tokens"], settings["seed"])
    dists, nvalues, targets = found.dists[chosen], found.nbr_values[chosen], found.targets[chosen]
    log_lm = found.lm_logprob[chosen].astype(np.float64)
    log_knn = knnlm.knn_target_logprob(dists, nvalues, targets, temperature)
    log_mix = knnlm.interpolate(log_lm, log_knn, lam)
    weights = knnlm.neighbour_weights(dists, nvalues, temperature)
    at = target_positions(test, found.example)[chosen]
    width = settings["context_tokens"]

    def context(tokens, end):
        return decode(tokens[max(0, end - width) : end])

    rows = []
    for rank, i in enumerate(np.argsort(-np.abs(log_mix - log_lm), kind="stable"), start=1):
        about = {"rank": rank, "position": int(chosen[i]), "context": context(test.tokens, at[i]),
                 "target": decode([targets[i]]), "p_lm": np.exp(log_lm[i]), "p_knn": np.exp(log_knn[i]),
                 "p_knnlm": np.exp(log_mix[i]), "gain": log_mix[i] - log_lm[i]}
        row_ids = np.asarray(ids[chosen[i]])
        listed = [j for j in range(len(row_ids)) if row_ids[j] >= 0][: settings["neighbours"]]
        for n, j in enumerate(listed, start=1):
            where = int(positions[row_ids[j]])
            if train_tokens[where] != nvalues[i, j]:
                raise ValueError(f"datastore entry {row_ids[j]}: its position {where} holds token "
                                 f"{train_tokens[where]}, its value is {nvalues[i, j]} (positions out of date?)")
            rows.append({**about, "neighbour": n, "train_position": where,
                         "neighbour_context": context(train_tokens, where), "next_token": decode([nvalues[i, j]]),
                         "distance": float(dists[i, j]), "weight": weights[i, j],
                         "matches_target": bool(nvalues[i, j] == targets[i])})
        if not listed:  # IVF can find no neighbour at all
            rows.append({**about, "neighbour": 0})
    return pd.DataFrame(rows, columns=NEIGHBOUR_COLUMNS)


NEIGHBOUR_COLUMNS = ["rank", "position", "context", "target", "p_lm", "p_knn", "p_knnlm", "gain", "neighbour",
                     "train_position", "neighbour_context", "next_token", "distance", "weight", "matches_target"]


# ---------------------------------------------------------------- fidelity of approximate search

FIDELITY_SEED = 0  # the sample of queries also searched exactly


def fidelity_rows(n_queries: int, n: int) -> np.ndarray:
    """The seeded sample of test queries that an approximate search also answers exactly
    (every shard answers them; the merge keeps their exact neighbours: rows, dists, ids, values)."""
    return knnlm.sample_rows(n_queries, n, FIDELITY_SEED) if n and n_queries else np.zeros(0, np.int64)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> np.ndarray:
    """Per query, the share of its exact k nearest entries that the approximate search found."""
    out = np.empty(len(exact_ids))
    for i, (a, e) in enumerate(zip(approx_ids, exact_ids)):
        e = e[e >= 0]
        out[i] = np.isin(e, a[a >= 0]).mean() if len(e) else 1.0
    return out


def fidelity(found: knnlm.SearchResults, approx_ids, exact: dict, lam: float, temperature: float) -> pd.DataFrame:
    """Per sampled query: recall@k and log p_knnlm(target) with the approximate and the
    exact neighbours (`exact`: rows, dists, ids and values of the exact search's; the LM's
    log p beside them)."""
    rows = exact["rows"]
    approx = knnlm.SearchResults(found.targets[rows], found.lm_logprob[rows], found.example[rows],
                                 found.dists[rows], found.nbr_values[rows])
    exactly = approx.with_neighbours(exact["dists"], exact["values"])
    return pd.DataFrame({"position": rows, "recall_at_k": recall_at_k(np.asarray(approx_ids[rows]), exact["ids"]),
                         "lm_logprob": approx.lm_logprob.astype(np.float64),
                         "knnlm_logprob_exact": knnlm.knnlm_logprob(exactly, lam, temperature),
                         "knnlm_logprob_approximate": knnlm.knnlm_logprob(approx, lam, temperature)})


def approximate_minus_exact(table: pd.DataFrame, n_resamples: int = 2000, seed: int = 0):
    """(kNN-LM perplexity with approximate neighbours minus with exact ones, 95% CI): one
    paired bootstrap over the sampled tokens."""
    columns = table[["knnlm_logprob_approximate", "knnlm_logprob_exact"]].to_numpy()
    return bootstrap_ci(columns, lambda m: np.exp(-m[..., 0]) - np.exp(-m[..., 1]), n_resamples, seed)
