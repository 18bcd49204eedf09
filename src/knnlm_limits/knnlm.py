"""kNN-LM stage (Khandelwal et al. 2020).

For each scored position: retrieve the k nearest datastore keys by squared L2
distance d_i, then

    p_knn(y) = sum_i 1[v_i = y] exp(-d_i / T) / sum_i exp(-d_i / T)
    p(y)     = lambda p_knn(y) + (1 - lambda) p_lm(y)

computed in log space. The search step stores each position's neighbour
distances and values, so that lambda and T can change without a new search.

The interpolation math is NumPy only; torch and the model are imported by the
functions that run a model, so that the grid, table and figure jobs start in
a fraction of a second.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace

import numpy as np
from tqdm import tqdm

from . import io
from .tokens import Examples, batches_by_tokens, pad_batch, scored_mask

# The interpolation runs over row chunks whose (rows, k) float64 temporaries (about
# TEMPORARIES of them alive at once) take ~CHUNK_BYTES: at k = 1024, 1,638 rows.
CHUNK_BYTES = 64 * 2**20
TEMPORARIES = 5
NEIGHBOUR_ARRAYS = ("dists", "nbr_values")  # SearchResults' (N, k) arrays


@dataclass
class SearchResults:
    """What the search stores, one row per scored position of the evaluated examples.

    An LM-only evaluation has no neighbours (dists and nbr_values None). A Macondo
    run stacks its checkpoints on a leading axis (see children.evaluate_run).
    """

    targets: np.ndarray  # int64 (N,): the token to predict
    lm_logprob: np.ndarray  # float32 (N,): log p_lm(target)
    example: np.ndarray  # int64 (N,): the example (window, sentence) the position is in
    dists: np.ndarray | None = None  # float32 (N, k): squared L2 distances of the neighbours
    nbr_values: np.ndarray | None = None  # int32 (N, k): their next tokens; -1 where none was found
    memory_logprob: np.ndarray | None = None  # float64 (N,): log p_memory(target) where a memory was evaluated

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def has_neighbours(self) -> bool:
        return self.dists is not None

    def with_neighbours(self, dists: np.ndarray, nbr_values: np.ndarray) -> "SearchResults":
        return replace(self, dists=dists, nbr_values=nbr_values)

    def arrays(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def save(self, path) -> None:
        io.save_npz(path, **self.arrays())

    @classmethod
    def from_arrays(cls, arrays: dict, source) -> "SearchResults":
        unknown = set(arrays) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{source}: not search results (unexpected arrays {sorted(unknown)})")
        return cls(**arrays)

    @classmethod
    def load(cls, path, neighbours: bool = True) -> "SearchResults":
        """The stored results; with neighbours=False the per-position arrays only (the (N, k)
        neighbours, most of the file, are not read)."""
        names = None if neighbours else [f.name for f in fields(cls) if f.name not in NEIGHBOUR_ARRAYS]
        return cls.from_arrays(io.load_npz(path, names), path)


def sample_rows(n_rows: int, n: int, seed: int) -> np.ndarray:
    """`n` of `n_rows` search-result rows drawn uniformly without replacement (seeded), in
    order: a sample over the whole evaluated split, not its first window's least-context
    tokens."""
    if n >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


def target_columns(examples: Examples, example_of_rows: np.ndarray) -> np.ndarray:
    """Each search-result row's target as a position in its example.

    lm_and_queries writes the rows example by example, each example's scored positions
    in order, so row r of example e is its ``score_start[e] + (r - e's first row)``-th token.
    """
    example = np.asarray(example_of_rows, dtype=np.int64)
    first = np.searchsorted(example, np.arange(len(examples)))  # each example's first row
    return examples.score_start[example] + (np.arange(len(example)) - first[example])


def lm_and_queries(model, examples: Examples, key: str | None = "mlp_input", batch_tokens: int = 8192, log=None):
    """(SearchResults without neighbours, queries): at every scored position the target
    token, log p_lm(target), and the kNN query key (an (N, d) float32 array).

    ``key=None`` scores with the LM alone (queries None): any causal LM works. The
    outputs are allocated once for ``examples.n_scored()`` rows and filled batch by
    batch (no per-batch lists joined at the end, which would hold everything twice).
    """
    import torch

    from .model import check_context, device_of, logits_and_keys_at

    model.eval()
    device = device_of(model)
    check_context(model, examples, "evaluation examples")
    n = examples.n_scored()
    out = {"targets": np.empty(n, np.int64), "lm_logprob": np.empty(n, np.float32), "example": np.empty(n, np.int64)}
    queries = None  # allocated at the first batch, which tells the key width
    row = 0
    with torch.no_grad():
        for idx in tqdm(list(batches_by_tokens(examples, batch_tokens)), file=log, mininterval=5, desc="lm"):
            ids, _ = pad_batch(examples, idx)
            mask = scored_mask(examples, idx, ids.size(1))  # (B, T-1): target t+1 is scored from position t
            at = torch.zeros_like(ids, dtype=torch.bool)
            at[:, :-1] = mask
            logits, keys = logits_and_keys_at(model, ids.to(device), at.to(device), key)
            logits, targets = logits.float(), ids[:, 1:][mask]
            # log p(target) = logit(target) - logsumexp(logits): no (N, V) log-softmax tensor
            target_logits = logits.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)
            rows = slice(row, row + len(targets))
            out["targets"][rows] = targets.numpy()
            out["lm_logprob"][rows] = (target_logits - torch.logsumexp(logits, dim=-1)).cpu().numpy()
            if keys is not None:
                if queries is None:
                    queries = np.empty((n, keys.shape[-1]), np.float32)
                queries[rows] = keys.float().cpu().numpy()
            out["example"][rows] = np.repeat(idx, mask.sum(1).numpy())  # each example's index, once per scored target
            row += len(targets)
    assert row == n, (row, n)
    if key is not None and queries is None:  # no position at all
        queries = np.zeros((0, model.config.hidden_size), np.float32)
    return SearchResults(**out), queries


def neighbour_values(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Next tokens of the retrieved entries; -1 where the search found no neighbour."""
    out = np.asarray(values)[np.where(ids >= 0, ids, 0)].astype(np.int32)
    out[ids < 0] = -1
    return out


def evaluate(model, searcher, values, examples: Examples, k: int, key: str = "mlp_input",
             batch_tokens: int = 8192, log=None, ids_path=None) -> SearchResults:
    """Everything the interpolation needs: LM log-probs and each position's neighbours.

    The search fills (N, k') float32 distances and int32 neighbour values batch by
    batch; a batch's int64 ids are turned into values and dropped, or, with
    ``ids_path``, also written to that (N, k') int64 .npy (for the inspection of
    neighbours: the interpolation never reads it).
    """
    found, queries = lm_and_queries(model, examples, key, batch_tokens, log)
    return search_neighbours(searcher, values, found, queries, k, log, ids_path)


def search_neighbours(searcher, values, found: SearchResults, queries: np.ndarray, k: int, log=None,
                      ids_path=None) -> SearchResults:
    """`found` with the neighbours of its queries (see evaluate)."""
    width = searcher.width(k) if len(queries) else k  # no position: (0, k), as a search of nothing gives
    dists = np.empty((len(queries), width), np.float32)
    nbr_values = np.empty((len(queries), width), np.int32)
    with contextlib.ExitStack() as files:
        ids_file = None
        if ids_path is not None:
            tmp = files.enter_context(io.atomic_path(ids_path))
            ids_file = files.enter_context(io.NpyWriter(tmp, np.int64, (len(queries), width)))
        for rows, batch_dists, ids in searcher.batches(queries, k, log=log):
            dists[rows] = batch_dists
            nbr_values[rows] = neighbour_values(values, ids)
            if ids_file is not None:
                ids_file.write(ids)
            del batch_dists, ids  # not alive while the next batch is searched
    return found.with_neighbours(dists, nbr_values)


def leave_one_out(searcher, keys, values, rows: np.ndarray, k: int, temperature: float, batch: int = 4096, log=None):
    """p_kNN of datastore entries over the other entries, batch by batch of `rows` (entry ids).

    Each entry's own key is its query; its k nearest entries other than itself are kept
    (k + 1 are searched, the entry dropped wherever it is found, else the farthest). Yields
    (slice of `rows`, neighbour values (b, k') int32, -1 where none, and their weights
    softmax(-d / T) (b, k') float64), k' = min(k, entries - 1). One datastore entry per
    training position (the datastore stage's contract), so the entry is the only one of
    its position.
    """
    from .index import as_rows

    keys, rows = as_rows(keys), np.asarray(rows, dtype=np.int64)
    for start in tqdm(range(0, len(rows), batch), file=log, mininterval=5, desc="leave-one-out"):
        own = rows[start : start + batch]
        dists, ids = searcher.search(np.asarray(keys[own], dtype=np.float32), k + 1)
        # the first k neighbours that are not the entry itself, in the search's order
        order = np.argsort(ids == own[:, None], axis=1, kind="stable")[:, : min(k, ids.shape[1] - 1)]
        dists, ids = np.take_along_axis(dists, order, 1), np.take_along_axis(ids, order, 1)
        found = neighbour_values(values, ids)
        yield slice(start, start + len(own)), found, neighbour_weights(dists, found, temperature)


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def neighbour_logits(dists, nvalues, temperature: float) -> np.ndarray:
    """-d / T in float64, -inf for missing neighbours."""
    logits = -np.asarray(dists, dtype=np.float64) / temperature
    return np.where(np.asarray(nvalues) < 0, -np.inf, logits)


def _row_chunks(n_rows: int, k: int, chunk_rows: int | None = None):
    """Row slices small enough that a chunk's (rows, k) float64 temporaries take ~CHUNK_BYTES."""
    rows = chunk_rows or max(1, CHUNK_BYTES // (8 * TEMPORARIES * max(k, 1)))
    return (slice(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows))


def knn_target_logprob(dists, nvalues, targets, temperature: float, chunk_rows: int | None = None) -> np.ndarray:
    """log p_knn(target) of each row; -inf if no neighbour has the target.

    Computed in row chunks: every step is row by row, so the result is the same as
    over all rows at once, and the (N, k) float64 temporaries exist one chunk at a time.
    """
    dists, nvalues, targets = np.asarray(dists), np.asarray(nvalues), np.asarray(targets)
    out = np.empty(len(dists), dtype=np.float64)
    for rows in _row_chunks(len(dists), dists.shape[-1], chunk_rows):
        out[rows] = _knn_target_logprob(dists[rows], nvalues[rows], targets[rows], temperature)
    return out


def _knn_target_logprob(dists, nvalues, targets, temperature: float) -> np.ndarray:
    logits = neighbour_logits(dists, nvalues, temperature)
    match = nvalues == targets[:, None]
    total = _logsumexp(logits)
    # a row with no neighbour at all (possible with IVF) has p_knn = 0 everywhere, so its
    # kNN-LM is (1 - lambda) p_lm, as in Khandelwal et al.'s implementation
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(total), _logsumexp(np.where(match, logits, -np.inf)) - total, -np.inf)


def neighbour_weights(dists, nvalues, temperature: float) -> np.ndarray:
    """Each neighbour's share of p_knn (B, k): softmax(-d / T) over a row's found neighbours."""
    logits = neighbour_logits(dists, nvalues, temperature)
    total = _logsumexp(logits)[:, None]
    with np.errstate(invalid="ignore"):  # a row with no neighbour at all: p_knn = 0 (see above)
        return np.where(np.isfinite(total), np.exp(logits - total), 0.0)


def knn_distribution(dists, nvalues, temperature: float, vocab_size: int) -> np.ndarray:
    """The whole p_knn over the vocabulary (B, V): neighbour weights summed by value."""
    weights = neighbour_weights(dists, nvalues, temperature)
    probs = np.zeros((len(weights), vocab_size))
    rows = np.broadcast_to(np.arange(len(weights))[:, None], weights.shape)
    np.add.at(probs, (rows, np.maximum(nvalues, 0)), weights)
    return probs


def interpolate(log_p_lm, log_p_knn, lam: float):
    """log(lambda p_knn + (1 - lambda) p_lm), in log space; works on arrays or tensors."""
    with np.errstate(divide="ignore"):
        log_lam, log_rest = np.log(lam), np.log1p(-lam)
    if isinstance(log_p_lm, np.ndarray):
        return np.logaddexp(log_lam + log_p_knn, log_rest + log_p_lm)
    import torch

    return torch.logaddexp(log_lam + log_p_knn, log_rest + log_p_lm)


def perplexity(logprobs) -> float:
    return float(np.exp(-np.mean(np.asarray(logprobs, dtype=np.float64))))


def knn_logprob(found: SearchResults, temperature: float) -> np.ndarray:
    """Per-token log p_knn(target) from the stored search results."""
    return knn_target_logprob(found.dists, found.nbr_values, found.targets, temperature)


def knnlm_logprob(found: SearchResults, lam: float, temperature: float) -> np.ndarray:
    """Per-token log p_knnlm(target) from the stored search results."""
    return interpolate(found.lm_logprob.astype(np.float64), knn_logprob(found, temperature), lam)


def grid(found: SearchResults, lambdas, temperatures):
    """Perplexity over a (lambda, T) grid; the p_knn of each T is computed once."""
    import pandas as pd

    lm = found.lm_logprob.astype(np.float64)
    rows = []
    for t in temperatures:
        log_knn = knn_logprob(found, t)
        for lam in lambdas:
            rows.append({"lambda": lam, "temperature": t, "perplexity": perplexity(interpolate(lm, log_knn, lam))})
    return pd.DataFrame(rows)


def tuned_setting(grid_table) -> tuple[float, float]:
    """(lambda, T) of the lowest validation perplexity on the grid."""
    best = grid_table.sort_values(["perplexity", "lambda", "temperature"]).iloc[0]
    return float(best["lambda"]), float(best["temperature"])
