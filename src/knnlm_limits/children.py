"""Children log-likelihood on Macondo (Figures 1-3).

For each (parent, child) prompt the log-likelihood of the child's name given
"[parent] is the parent of" (or the chat prompt), under the LM, the pure kNN
distribution and the interpolated kNN-LM. A name of several tokens sums its
tokens' log-probabilities. The best possible value is log(1/n), n the parent's
number of children.

A Macondo run (one training run of Figure 1 or 2) is evaluated in one job:
at every checkpoint, the LM's log-probabilities of the children and, for runs
with a kNN-LM, the neighbours of each prompt in a datastore of the training
sentences under that checkpoint (small: built and searched in memory). The
interpolation (lambda, T) is applied by the figure, so changing it reruns no
model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import io
from .knnlm import SearchResults, interpolate, knn_logprob

METHODS = ("lm", "knn", "knnlm")


def evaluate_run(checkpoints: list, prompts, sentences=None, knn: dict | None = None, log=None) -> SearchResults:
    """Search results of a run, stacked over its checkpoints (steps in the given order):
    lm_logprob, dists and nbr_values get a leading checkpoint axis.

    `knn` holds k, key, batch_tokens and the index settings; with ``sentences``
    None (an LM-only run) only the LM's log-probabilities are computed.
    """
    from . import datastore, model
    from .index import Searcher
    from .knnlm import lm_and_queries, neighbour_values

    per_step = []
    for path in checkpoints:
        lm = model.load_lm(str(path))
        key = knn["key"] if sentences is not None else None
        found, queries = lm_and_queries(lm, prompts, key, log=log)
        if sentences is not None:
            keys, values = datastore.in_memory(lm, sentences, knn["key"], knn["batch_tokens"])
            dists, ids = Searcher.in_memory(keys, knn, log=log).search(queries, knn["k"])
            found = found.with_neighbours(dists, neighbour_values(values, ids))
        per_step.append(found)
    first = per_step[0]
    stacked = {name: np.stack([getattr(f, name) for f in per_step])
               for name in ("lm_logprob", "dists", "nbr_values") if getattr(first, name) is not None}
    return SearchResults(targets=first.targets, example=first.example, **stacked)


def save_run(path, steps, run: SearchResults) -> None:
    io.save_npz(path, steps=np.asarray(steps), **run.arrays())


def load_run(path) -> SearchResults:
    """A run as save_run stored it (its steps are the rule's params, not read back)."""
    arrays = io.load_npz(path)
    arrays.pop("steps")
    return SearchResults.from_arrays(arrays, path)


def at_step(run: SearchResults, i: int) -> SearchResults:
    """The search results of a stacked run's i-th checkpoint."""
    pick = lambda a: None if a is None else a[i]  # noqa: E731
    return SearchResults(run.targets, run.lm_logprob[i], run.example, pick(run.dists), pick(run.nbr_values))


def per_example(found: SearchResults, n_examples: int, logprob: np.ndarray) -> np.ndarray:
    return np.bincount(found.example, weights=logprob, minlength=n_examples)


def loglik_table(found: SearchResults, prompts: pd.DataFrame, lam: float | None = None,
                 temperature: float | None = None) -> pd.DataFrame:
    """One row per (prompt, method) with the child's log-likelihood, for one checkpoint.

    Methods: lm, and with search results also knn and knnlm (at lam, T).
    """
    lm = found.lm_logprob.astype(np.float64)
    per_token = {"lm": lm}
    if found.has_neighbours:
        knn = knn_logprob(found, temperature)
        per_token |= {"knn": knn, "knnlm": interpolate(lm, knn, lam)}
    frames = []
    for method, values in per_token.items():
        frame = prompts[["parent", "child", "n_children"]].copy()
        frame["method"] = method
        frame["loglik"] = per_example(found, len(prompts), values)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_table(run: SearchResults, steps, prompts: pd.DataFrame, lam: float, temperature: float) -> pd.DataFrame:
    """loglik_table at every checkpoint of a run (as stored by evaluate_run)."""
    tables = []
    for i, step in enumerate(steps):
        table = loglik_table(at_step(run, i), prompts, lam, temperature)
        table.insert(3, "step", step)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def lm_table(lm, examples, prompts: pd.DataFrame, log=None) -> pd.DataFrame:
    """The LM's log-likelihood of each child (no kNN); any causal LM."""
    from .knnlm import lm_and_queries

    return loglik_table(lm_and_queries(lm, examples, key=None, log=log)[0], prompts)


def sum_of_child_probs(table: pd.DataFrame, method: str = "lm") -> pd.Series:
    """Per parent, the total probability given to its children (at most 1 for a distribution)."""
    rows = table[table.method == method]
    return np.exp(rows.loglik).groupby(rows.parent).sum()
