"""Children log-likelihood on Macondo (Figures 1-3).

For each (parent, child) prompt the log-likelihood of the child's name given
"[parent] is the parent of" (or the chat prompt), under the LM, the pure kNN
distribution and the interpolated kNN-LM. A name of several tokens sums its
tokens' log-probabilities. The best possible value is log(1/n), n the parent's
number of children.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .knnlm import interpolate, knn_target_logprob, lm_and_queries

METHODS = ("lm", "knn", "knnlm")


def per_example(found: dict, n_examples: int, logprob: np.ndarray) -> np.ndarray:
    return np.bincount(found["example"], weights=logprob, minlength=n_examples)


def loglik_table(found: dict, prompts: pd.DataFrame, lam: float, temperature: float) -> pd.DataFrame:
    """One row per (prompt, method) with the child's log-likelihood."""
    lm = found["lm_logprob"].astype(np.float64)
    knn = knn_target_logprob(found["dists"], found["nbr_values"], found["targets"], temperature).astype(np.float64)
    per_token = {"lm": lm, "knn": knn, "knnlm": interpolate(lm, knn, lam)}
    frames = []
    for method, values in per_token.items():
        frame = prompts[["parent", "child", "n_children"]].copy()
        frame["method"] = method
        frame["loglik"] = per_example(found, len(prompts), values)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def lm_table(lm, examples, prompts: pd.DataFrame, log=None) -> pd.DataFrame:
    """The LM's log-likelihood of each child (no kNN)."""
    found = lm_and_queries(lm, examples, log=log)
    frame = prompts[["parent", "child", "n_children"]].copy()
    frame["method"] = "lm"
    frame["loglik"] = per_example(found, len(prompts), found["lm_logprob"].astype(np.float64))
    return frame


def sum_of_child_probs(table: pd.DataFrame, method: str = "lm") -> pd.Series:
    """Per parent, the total probability given to its children (at most 1 for a distribution)."""
    rows = table[table.method == method]
    return np.exp(rows.loglik).groupby(rows.parent).sum()
