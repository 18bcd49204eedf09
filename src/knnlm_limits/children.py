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
model. Figure 2's runs can also train a parametric memory (memory_mlp) on that
datastore, at every checkpoint or the last, and store its log-probabilities of
the children (method lm_memory: interpolated at the kNN-LM's lambda).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from . import io
from .knnlm import SearchResults, interpolate, knn_logprob

METHODS = ("lm", "knn", "knnlm", "memory", "lm_memory")


def evaluate_run(checkpoints: list, prompts, sentences=None, knn: dict | None = None, log=None) -> SearchResults:
    """Search results of a run, stacked over its checkpoints (steps in the given order):
    lm_logprob, dists and nbr_values get a leading checkpoint axis.

    `knn` holds k, key, batch_tokens and the index settings; with ``sentences``
    None (an LM-only run) only the LM's log-probabilities are computed.
    """
    from . import datastore, model
    from .index import Searcher
    from .knnlm import lm_and_queries, neighbour_values

    memory = (knn or {}).get("memory")
    with_memory = _memory_checkpoints(len(checkpoints), memory)
    per_step = []
    for i, path in enumerate(checkpoints):
        lm = model.load_lm(str(path))
        key = knn["key"] if sentences is not None else None
        found, queries = lm_and_queries(lm, prompts, key, log=log)
        if sentences is not None:
            keys, values = datastore.in_memory(lm, sentences, knn["key"], knn["batch_tokens"])
            searcher = Searcher.in_memory(keys, knn, log=log)
            dists, ids = searcher.search(queries, knn["k"])
            found = found.with_neighbours(dists, neighbour_values(values, ids))
            if memory is not None:
                logprob = np.full(len(found), np.nan)
                if i in with_memory:
                    logprob = memory_logprob(lm, searcher, keys, values, queries, found.targets, knn, memory, log)
                found = replace(found, memory_logprob=logprob)
        per_step.append(found)
    first = per_step[0]
    stacked = {name: np.stack([getattr(f, name) for f in per_step])
               for name in ("lm_logprob", "dists", "nbr_values", "memory_logprob") if getattr(first, name) is not None}
    return SearchResults(targets=first.targets, example=first.example, **stacked)


def _memory_checkpoints(n: int, memory: dict | None) -> set[int]:
    """Which checkpoints (indices) get a memory: every one, the last, or none."""
    if memory is None:
        return set()
    return set(range(n)) if memory["checkpoints"] == "all" else {n - 1}


def memory_logprob(lm, searcher, keys, values, queries, targets, knn: dict, memory: dict, log=None) -> np.ndarray:
    """A memory trained on a run's small datastore (leave-one-out kNN targets of a sample of
    its entries), then its log-prob of each prompt's target from the prompt's query key."""
    from . import memory_mlp
    from .knnlm import leave_one_out
    from .memory import kl_sample

    rows = kl_sample(len(keys), memory["kl_positions"], memory["seed"])
    parts = list(leave_one_out(searcher, keys, values, rows, knn["k"], memory["temperature"]))
    data = memory_mlp.MemoryData(keys, values, rows, np.concatenate([p[1] for p in parts]),
                                 np.concatenate([p[2] for p in parts]).astype(np.float16))
    mlp = memory_mlp.build(keys.shape[1], lm.config.vocab_size, memory["layers"], memory["expansion"], memory["head"],
                           lm, memory["seed"]).to(next(lm.parameters()).device)
    s = memory_mlp.settings(len(data), memory["epochs"], memory["batch_size"], lr=memory["lr"],
                            warmup_steps=memory["warmup_steps"], weight_decay=memory["weight_decay"], seed=memory["seed"])
    memory_mlp.fit(mlp, data, s, memory["alpha"])
    print(f"memory: {len(data)} entries, {len(rows)} kNN targets, {s.total_steps} steps of {s.batch_size}, "
          f"warm-up {s.warmup_steps}, lr {s.lr}", file=log)
    return memory_mlp.target_logprob(mlp, queries, targets)


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
    return SearchResults(run.targets, run.lm_logprob[i], run.example, pick(run.dists), pick(run.nbr_values),
                         pick(run.memory_logprob))


def per_example(found: SearchResults, n_examples: int, logprob: np.ndarray) -> np.ndarray:
    return np.bincount(found.example, weights=logprob, minlength=n_examples)


def loglik_table(found: SearchResults, prompts: pd.DataFrame, lam: float | None = None,
                 temperature: float | None = None) -> pd.DataFrame:
    """One row per (prompt, method) with the child's log-likelihood, for one checkpoint.

    Methods: lm, and with search results also knn and knnlm (at lam, T), and where a memory
    was evaluated at this checkpoint memory and lm_memory (at lam).
    """
    lm = found.lm_logprob.astype(np.float64)
    per_token = {"lm": lm}
    if found.has_neighbours:
        knn = knn_logprob(found, temperature)
        per_token |= {"knn": knn, "knnlm": interpolate(lm, knn, lam)}
    if found.memory_logprob is not None and np.isfinite(found.memory_logprob).all():
        per_token |= {"memory": found.memory_logprob, "lm_memory": interpolate(lm, found.memory_logprob, lam)}
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
