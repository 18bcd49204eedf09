"""kNN-LM stage (Khandelwal et al. 2020).

For each scored position: retrieve the k nearest datastore keys by squared L2
distance d_i, then

    p_knn(y) = sum_i 1[v_i = y] exp(-d_i / T) / sum_i exp(-d_i / T)
    p(y)     = lambda p_knn(y) + (1 - lambda) p_lm(y)

computed in log space (logsumexp of log lambda + log p_knn and
log(1 - lambda) + log p_lm). The search step stores each position's neighbour
distances and values, so that lambda and T can change without a new search.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .model import check_context, device_of, logits_and_keys
from .tokens import Examples, batches_by_tokens, pad_batch, scored_mask


@torch.no_grad()
def lm_and_queries(model, examples: Examples, key: str = "mlp_input", batch_tokens: int = 8192, log=None):
    """At every scored position: target token, log p_lm(target), the kNN query key."""
    model.eval()
    device = device_of(model)
    check_context(model, examples, "evaluation examples")
    out = {"targets": [], "lm_logprob": [], "queries": [], "example": []}
    for idx in tqdm(list(batches_by_tokens(examples, batch_tokens)), file=log, mininterval=5, desc="lm"):
        ids, _ = pad_batch(examples, idx)
        mask = scored_mask(examples, idx, ids.size(1))
        logits, keys = logits_and_keys(model, ids.to(device), key)
        logits, targets = logits[:, :-1].float(), ids[:, 1:]
        # log p(target) = logit(target) - logsumexp(logits): no (B, T, V) log-softmax tensor
        target_logits = logits.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)
        logp = (target_logits - torch.logsumexp(logits, dim=-1)).cpu()
        out["targets"].append(targets[mask])
        out["lm_logprob"].append(logp[mask])
        out["queries"].append(keys[:, :-1].cpu()[mask].float())
        rows = torch.as_tensor(idx).unsqueeze(1).expand_as(mask)
        out["example"].append(rows[mask])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def search(index, queries: np.ndarray, k: int, batch: int = 16384, log=None):
    """Squared L2 distances (N, k) and datastore ids (N, k); -1 marks no neighbour."""
    k = min(k, index.ntotal)
    dists = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in tqdm(range(0, len(queries), batch), file=log, mininterval=5, desc="search"):
        q = np.ascontiguousarray(queries[start : start + batch], dtype=np.float32)
        dists[start : start + len(q)], ids[start : start + len(q)] = index.search(q, k)
    return dists, ids


def neighbour_values(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Next tokens of the retrieved entries; -1 where FAISS found no neighbour."""
    out = np.asarray(values)[np.where(ids >= 0, ids, 0)].astype(np.int32)
    out[ids < 0] = -1
    return out


def _neighbour_logits(dists: torch.Tensor, nvalues: torch.Tensor, temperature: float) -> torch.Tensor:
    """-d / T, with -inf for missing neighbours."""
    return (-dists / temperature).masked_fill(nvalues < 0, float("-inf"))


def knn_target_logprob(dists, nvalues, targets, temperature: float) -> np.ndarray:
    """log p_knn(target) for each row, vectorised; -inf if no neighbour has the target."""
    dists, nvalues, targets = (torch.as_tensor(np.asarray(a)) for a in (dists, nvalues, targets))
    logits = _neighbour_logits(dists.float(), nvalues, temperature)
    match = nvalues == targets.unsqueeze(-1).to(nvalues.dtype)
    log_num = torch.logsumexp(logits.masked_fill(~match, float("-inf")), dim=-1)
    return (log_num - torch.logsumexp(logits, dim=-1)).numpy()


def knn_log_dist(dists, nvalues, temperature: float, vocab_size: int) -> torch.Tensor:
    """The whole log p_knn over the vocabulary (B, V): neighbour weights scattered by value."""
    dists, nvalues = torch.as_tensor(np.asarray(dists)).float(), torch.as_tensor(np.asarray(nvalues)).long()
    weights = torch.softmax(_neighbour_logits(dists, nvalues, temperature), dim=-1)
    probs = torch.zeros(dists.size(0), vocab_size).scatter_add_(1, nvalues.clamp(min=0), weights)
    return probs.log()


def interpolate(log_p_lm, log_p_knn, lam: float):
    """log(lambda p_knn + (1 - lambda) p_lm), in log space; works on arrays or tensors."""
    lib = torch if isinstance(log_p_lm, torch.Tensor) else np
    with np.errstate(divide="ignore"):
        log_lam, log_rest = np.log(lam), np.log1p(-lam)
    return lib.logaddexp(log_lam + log_p_knn, log_rest + log_p_lm)


def perplexity(logprobs) -> float:
    return float(np.exp(-np.mean(np.asarray(logprobs, dtype=np.float64))))


def evaluate(model, index, values, examples: Examples, k: int, key: str = "mlp_input",
             batch_tokens: int = 8192, log=None) -> dict:
    """Everything the interpolation needs: LM log-probs and each position's neighbours."""
    found = lm_and_queries(model, examples, key, batch_tokens, log)
    dists, ids = search(index, found.pop("queries"), k, log=log)
    return {**found, "dists": dists, "nbr_values": neighbour_values(values, ids)}


def knnlm_logprob(found: dict, lam: float, temperature: float) -> np.ndarray:
    """Per-token log p_knnlm(target) from the stored search results."""
    log_knn = knn_target_logprob(found["dists"], found["nbr_values"], found["targets"], temperature)
    return interpolate(found["lm_logprob"].astype(np.float64), log_knn.astype(np.float64), lam)


def grid(found: dict, lambdas, temperatures):
    """Perplexity over a (lambda, T) grid; the p_knn of each T is computed once."""
    import pandas as pd

    lm = found["lm_logprob"].astype(np.float64)
    rows = []
    for t in temperatures:
        log_knn = knn_target_logprob(found["dists"], found["nbr_values"], found["targets"], t).astype(np.float64)
        for lam in lambdas:
            rows.append({"lambda": lam, "temperature": t, "perplexity": perplexity(interpolate(lm, log_knn, lam))})
    return pd.DataFrame(rows)
