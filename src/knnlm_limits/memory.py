"""Parametric-memory stage: what an MLP trained on the datastore keeps of the kNN-LM's gain.

The MLP itself, its loss and its training are in memory_mlp.py (torch). Here, with NumPy
only (the rules and the cost model read it while the workflow is planned):

- its size and bytes, its training compute and its kNN targets' search compute, which the
  more-training control matches together;
- the kNN targets of a seeded sample of datastore entries: each entry's p_kNN over the
  *other* entries (every shard answers the sampled entries' keys, the merge drops each
  entry in its own shard: shards.merge_rows, as knnlm.leave_one_out does unsharded), stored
  sparse in a folder of three .npy files:
  rows (S,) int64 entry ids, values (S, k) int32 neighbour values (-1: none), weights
  (S, k) float16 softmax(-d / T) (never dense vocabulary vectors);
- the validation grid of lambda_m and the memory table, the storage-perplexity frontier
  and their per-token CSV, from which every reported number can be recomputed.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from . import io
# NumPy only (planning reads this module)
from .knnlm import (SearchResults, grid as knn_grid, interpolate, knnlm_logprob, neighbour_weights, perplexity,
                    sample_rows, tuned_setting)

KL_FILES = ("rows", "values", "weights")
OBJECTIVES = ("imitation", "values")  # alpha = memory.alpha, alpha = 0 (keys to values: the control)


# ---------------------------------------------------------------- size, bytes, compute


def parameters(key_width: int, vocab: int, layers: int, expansion: int) -> dict:
    """{body, head} parameter counts of a memory (memory_mlp.MemoryMLP)."""
    d, hidden = key_width, expansion * key_width
    block = 2 * d + d * hidden + hidden + hidden * d + d  # LayerNorm, up, down
    return {"body": layers * block + 2 * d, "head": vocab * d}


def memory_bytes(counts: dict, head: str) -> dict:
    """Bytes of a memory's parameters at query time, float32 and float16; the head counts
    unless it is the LM's own (head 'lm_frozen': shared with the LM, stored once)."""
    own = counts["body"] + (0 if head == "lm_frozen" else counts["head"])
    return {"bytes_fp32": 4 * own, "bytes_fp16": 2 * own, "bytes_fp32_with_head": 4 * (counts["body"] + counts["head"]),
            "bytes_fp32_without_head": 4 * counts["body"]}


def training_flops(counts: dict, head: str, n_entries: int, epochs: float) -> float:
    """FLOPs of training a memory: per key, forward and input gradients (2 + 2 a parameter)
    and weight gradients (2 a trained parameter)."""
    total = counts["body"] + counts["head"]
    trained = counts["body"] + (0 if head == "lm_frozen" else counts["head"])
    return n_entries * epochs * (4 * total + 2 * trained)


def kl_target_count(n_entries: int, n: int | None) -> int:
    """Entries given a kNN target (kl_sample's size): memory.kl_positions of them, every entry when None."""
    return n_entries if n is None else min(n, n_entries)


def target_search_flops(n_targets: int, n_keys: int, d: int, kind: str, k: int, nprobe: int, rerank: bool,
                        shards: int) -> float:
    """FLOPs of the kNN targets' search (memory_target_shard): each of n_targets entries' key
    searched for its k + 1 nearest of n_keys keys of width d, in each of `shards` shards,
    through an index of `kind`.

    Exact search (exact, Flat, SQfp16): a distance to every key, 2 d FLOPs each (FAISS's kernel:
    a dot product, the norms once), 2 n_targets n_keys d whatever the shards. An IVF index: in
    every shard the coarse quantiser's nlist distances, then the codes of the nprobe lists
    probed (n_keys nprobe / nlist a query over all shards, lists of equal size), each scanned
    for index.code_scan_flops (a PQ code: one addition a sub-quantiser; its look-up tables,
    2 x 256 d a query, left out); exact re-ranking, a distance (2 d) a neighbour in every shard.
    """
    from .index import EXACT_KINDS, code_scan_flops, ivf_shape

    if kind in EXACT_KINDS:
        return 2.0 * n_targets * n_keys * d
    nlist, _ = ivf_shape(kind, d)
    scan = code_scan_flops(kind, d)
    per_query = shards * 2 * nlist * d + n_keys * min(1.0, nprobe / nlist) * scan
    if rerank:
        per_query += shards * 2 * d * min(k + 1, -(-n_keys // shards))
    return float(n_targets * per_query)


# what the search's cost follows from besides the planned index kind
TARGET_SEARCH_KNN = ("k", "nprobe", "rerank", "shards")


def target_search_settings(knn: dict, memory: dict, kind: str) -> dict | None:
    """What the kNN targets' search FLOPs follow from, before any job ran: memory_targets'
    sample and search settings and the index kind the workflow planned (index.planned_kind; any
    exact kind costs the same); None where the memory has no kNN targets (memory.alpha 0)."""
    from .index import EXACT, EXACT_KINDS

    if memory["alpha"] == 0:
        return None
    return {"n": memory["kl_positions"], **{key: knn[key] for key in TARGET_SEARCH_KNN},
            "kind": EXACT if kind in EXACT_KINDS else kind}


def planned_target_search_flops(n_entries: int, d: int, settings: dict | None) -> float:
    """target_search_flops of a datastore of n_entries keys of width d, as target_search_settings
    plan it, the sample capped by the datastore (0 for None)."""
    if settings is None:
        return 0.0
    return target_search_flops(kl_target_count(n_entries, settings["n"]), n_entries, d, settings["kind"],
                               settings["k"], settings["nprobe"], settings["rerank"], settings["shards"])


def imitation_flops(counts: dict, head: str, n_entries: int, epochs: float, d: int, target_search: dict | None) -> float:
    """The compute the more-training control is matched to: the memory's training and its kNN
    targets' search (target_search_settings; None: no search)."""
    return training_flops(counts, head, n_entries, epochs) + planned_target_search_flops(n_entries, d, target_search)


def more_training_steps(budget: str, memory_flops: float, lm_params: float, tokens_per_step: int,
                        epochs: float, n_train_tokens: int) -> int:
    """Steps the more-training control adds to its LM: the memory's compute (imitation_flops) at
    6 FLOPs a parameter a token ('compute'), or the memory's epochs over the training split
    ('epochs')."""
    if budget == "epochs":
        return max(1, math.ceil(epochs * n_train_tokens / tokens_per_step))
    return max(1, math.ceil(memory_flops / (6 * lm_params * tokens_per_step)))


def datastore_bytes(key_files, value_files, index_dirs, kind: str, rerank: bool) -> int:
    """Bytes a kNN-LM reads at query time, over its shards: values and indexes (exact search:
    none), and float16 keys where the search reads them (exact search over the key files;
    exact re-ranking of an approximate index's neighbours). A Flat / SQfp16 index holds the
    keys itself."""
    from .index import EXACT, reranks

    reads_keys = kind == EXACT or reranks(kind, rerank)
    return sum(folder_bytes(f) for f in [*value_files, *index_dirs, *(key_files if reads_keys else [])])


def folder_bytes(path) -> int:
    """Bytes of a file, or of every file in a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------- kNN targets


def kl_sample(n_entries: int, n: int | None, seed: int) -> np.ndarray:
    """The sorted entry ids that get a kNN target: a seeded sample of n (every entry when None),
    kl_target_count of them."""
    return np.arange(n_entries) if n is None else sample_rows(n_entries, n, seed)


def check_one_entry_per_position(positions_paths, chunk: int = 2**22) -> None:
    """The datastore stores each training position once, in order (positions strictly rise
    over its shards, in order): then excluding an entry excludes every entry of its position.
    Read in chunks."""
    paths = [positions_paths] if isinstance(positions_paths, (str, Path)) else list(positions_paths)
    previous = -1
    for path in paths:
        positions = np.load(path, mmap_mode="r")
        for start in range(0, len(positions), chunk):
            part = np.asarray(positions[start : start + chunk])
            if len(part) and (part[0] <= previous or np.any(np.diff(part) <= 0)):
                raise ValueError(f"{path}: positions do not strictly rise, so an entry is not the only one "
                                 "of its training position; rebuild the datastore")
            previous = int(part[-1]) if len(part) else previous


def write_kl_queries(folder, key_files, rows: np.ndarray) -> None:
    """The sampled entries' ids and their keys (float32): the queries every shard answers."""
    from .index import as_rows

    keys = as_rows(list(key_files))
    with io.atomic_path(folder) as tmp:
        tmp.mkdir()
        np.save(tmp / "rows.npy", np.asarray(rows, dtype=np.int64))
        np.save(tmp / "keys.npy", np.asarray(keys[rows], dtype=np.float32))


def write_kl_targets(folder, rows: np.ndarray, answers: list[dict], k: int, temperature: float, log=None) -> int:
    """Each sampled entry's leave-one-out p_kNN from the shards' answers to its key (k + 1
    neighbours each), the entry dropped in its own shard: neighbour values and float16
    weights softmax(-d / T), written chunk by chunk into `folder`."""
    from .shards import merged, merged_width

    rows = np.asarray(rows, dtype=np.int64)
    width = merged_width(answers, k, own=True) if len(rows) else 0
    with io.atomic_path(folder) as tmp, contextlib.ExitStack() as files:
        tmp.mkdir()
        np.save(tmp / "rows.npy", rows)
        found = files.enter_context(io.NpyWriter(tmp / "values.npy", np.int32, (len(rows), width)))
        weights = files.enter_context(io.NpyWriter(tmp / "weights.npy", np.float16, (len(rows), width)))
        if len(rows):
            for _, dists, _, values in merged(answers, k, own=rows, log=log):
                found.write(values)
                weights.write(neighbour_weights(dists, values, temperature))
    return len(rows)


def kl_targets(folder) -> tuple:
    """(rows, values, weights) of a kNN-target folder: the ids in memory, the rest as files
    read a batch at a time."""
    folder = Path(folder)
    return np.load(folder / "rows.npy"), folder / "values.npy", folder / "weights.npy"


# ---------------------------------------------------------------- lambda_m, the table, the frontier


def lambda_grid(lm_valid: np.ndarray, mem_valid: np.ndarray, lambdas) -> list[dict]:
    """Validation perplexity of LM + memory at each lambda_m."""
    lm = np.asarray(lm_valid, dtype=np.float64)
    return [{"lambda": lam, "perplexity": perplexity(interpolate(lm, mem_valid, lam))} for lam in lambdas]


def tuned_lambda(grid: list[dict]) -> float:
    """lambda_m of the lowest validation perplexity (the smaller lambda on a tie)."""
    return min(grid, key=lambda row: (row["perplexity"], row["lambda"]))["lambda"]


def bootstrap_perplexity(logprobs: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """(perplexity, 95% CI) over the test tokens."""
    from .stats import bootstrap_ci

    return bootstrap_ci(np.asarray(logprobs, dtype=np.float64)[:, None], lambda m: np.exp(-m[..., 0]),
                        n_resamples, seed)


# ---------------------------------------------------------------- the frontier's compressed datastores


def frontier_shard(trained, key_file, value_file, manifest, queries: dict, out_index, out_answer, k: int,
                   nprobe: int, threads: int, log=None) -> dict:
    """The frontier_shard job: a shard's product-quantised codes (a copy of the code size's
    trained index with the shard's keys, written as the index stage writes one; no keys kept,
    so searched without re-ranking) and its answer to each evaluated split's queries."""
    from . import index
    from .shards import answer_shard, read_manifest

    written = index.write_shard(out_index, trained, key_file, log=log)
    searcher = index.Searcher.open(out_index, key_file, {"nprobe": nprobe, "rerank": False, "threads": threads})
    offset, values = read_manifest(manifest)["offset"], np.load(value_file, mmap_mode="r")
    Path(out_answer).mkdir(parents=True, exist_ok=True)
    for split, path in queries.items():
        answer_shard(searcher, values, np.load(path, mmap_mode="r"), k, offset, out_answer, split, log=log)
    return written


def frontier_merge(lm_pass: dict, answers: list, k: int, out: dict, log=None) -> None:
    """The frontier_pq job: each split's LM pass with its k nearest over the shards' answers
    through the PQ codes (the LM's log-probs are the LM pass's)."""
    from .shards import merge_search, read_answer

    for split, path in lm_pass.items():
        found = merge_search(SearchResults.load(path), [read_answer(a, split) for a in answers], k, out[split], log=log)
        print(f"{split}: {len(found)} queries, {len(answers)} shards merged", file=log)


# ---------------------------------------------------------------- the memory table and the frontier


def memory_name(expansion: int, objective: str) -> str:
    return f"x{expansion}-{objective}"


def _results(found, neighbours: bool = True):
    """SearchResults, from its file or as given."""
    return found if isinstance(found, SearchResults) else SearchResults.load(found, neighbours)


def tables(found: dict, fixed: tuple, tuned: tuple, memories: dict, more: dict | None, pq: dict,
           datastore_bytes: int, search_kind: str, lambdas, grid: dict, bootstrap: dict) -> dict:
    """The stage's tables at one kNN-LM point, from what its jobs stored.

    found: the configured search's {valid, test} search results (files or SearchResults);
    fixed / tuned: the kNN-LM's (lambda, T) as configured and as Table 1's validation grid
    chose; memories: {name: {objective: one of OBJECTIVES, logprobs: {valid, test}, footprint: its
    footprint row (bytes, training steps, train_flops, target_search_flops), costs: its
    query_costs rows}}; more: the
    more-trained LM's {valid, test, extra_steps, train_flops} or None; pq: {code: {valid, test,
    bytes}}.
    One split's neighbours are held at a time: the job's memory is a split's, not all of them.

    Returns DataFrames: `tokens` (per test token, every log-prob the table reads), `grid`
    (validation perplexity of each lambda_m, and of (lambda, T) for each PQ kNN-LM), `table`,
    `frontier` (bytes against test perplexity with its bootstrap interval; a memory's objective)
    and `costs`.
    """
    import pandas as pd


    lm_valid = _results(found["valid"], neighbours=False).lm_logprob.astype(np.float64)
    test = _results(found["test"])
    tokens = {"position": np.arange(len(test)), "target": test.targets, "lm": test.lm_logprob.astype(np.float64),
              "knnlm_fixed": knnlm_logprob(test, *fixed), "knnlm_tuned": knnlm_logprob(test, *tuned)}
    del test
    grids, rows, points = [], [], []

    def row(component, kind, bytes_, fixed_col=None, tuned_col=None, lam=None, temperature=None, **extra):
        rows.append({"component": component, "kind": kind, "bytes": bytes_,
                     "test_ppl_fixed": perplexity(tokens[fixed_col]) if fixed_col else np.nan,
                     "test_ppl_tuned": perplexity(tokens[tuned_col]) if tuned_col else np.nan,
                     "lambda": lam, "temperature": temperature, **extra})

    def point(component, kind, bytes_, column, objective=""):
        ppl, low, high = bootstrap_perplexity(tokens[column], bootstrap["bootstrap_resamples"], bootstrap["seed"])
        points.append({"component": component, "kind": kind, "objective": objective, "bytes": bytes_, "test_ppl": ppl,
                       "ci_low": low, "ci_high": high, "column": column})

    row("LM", "lm", 0, "lm", "lm")
    point("LM alone", "lm", 0, "lm")
    if more is not None:
        tokens["lm_more"] = np.asarray(more["test"], dtype=np.float64)
        row(f"LM trained {int(more['extra_steps'])} steps further", "more_training", 0, "lm_more", "lm_more",
            extra_steps=int(more["extra_steps"]), train_flops=float(more["train_flops"]), target_search_flops=0.0)
    row(f"kNN-LM, datastore (float16 keys, {search_kind})", "knn", datastore_bytes, "knnlm_fixed", "knnlm_tuned",
        tuned[0], tuned[1])
    point("kNN-LM, datastore", "knn", datastore_bytes, "knnlm_tuned")
    for code, entry in sorted(pq.items()):
        g = knn_grid(_results(entry["valid"]), grid["lambda"], grid["temperature"])
        grids.append(g.rename(columns={"perplexity": "valid_perplexity"}).assign(component=f"pq{code}"))
        lam, temperature = tuned_setting(g)
        column, test = f"knnlm_pq{code}", _results(entry["test"])
        tokens[column] = knnlm_logprob(test, lam, temperature)
        tokens[f"{column}_fixed"] = knnlm_logprob(test, *fixed)
        del test
        row(f"kNN-LM, PQ{code} codes", "knn_pq", entry["bytes"], f"{column}_fixed", column, lam, temperature)
        point(f"kNN-LM, PQ{code}", "knn_pq", entry["bytes"], column)
    for name, entry in memories.items():
        valid, mem = entry["logprobs"]["valid"], np.asarray(entry["logprobs"]["test"], dtype=np.float64)
        g = lambda_grid(lm_valid, valid, lambdas)
        grids.append(pd.DataFrame(g).rename(columns={"perplexity": "valid_perplexity"})
                     .assign(temperature=np.nan, component=f"memory {name}"))
        lam = tuned_lambda(g)
        tokens[f"memory_{name}"] = mem
        tokens[f"lm_memory_{name}"] = interpolate(tokens["lm"], mem, lam)
        tokens[f"lm_memory_{name}_fixed"] = interpolate(tokens["lm"], mem, fixed[0])
        foot = entry["footprint"]
        size = int(foot["bytes_fp32"])
        # each component's compute: its training, and the kNN targets' search it was trained on
        compute = {"train_flops": float(foot["train_flops"]), "target_search_flops": float(foot["target_search_flops"])}
        objective = entry["objective"]
        row(f"memory {name} alone", "memory_alone", size, f"memory_{name}", f"memory_{name}", objective=objective,
            **compute)
        row(f"LM + memory {name}", "memory", size, f"lm_memory_{name}_fixed", f"lm_memory_{name}", lam,
            objective=objective, bytes_fp16=int(foot["bytes_fp16"]), train_steps=int(foot["train_steps"]), **compute)
        point(f"LM + memory {name}", "memory", size, f"lm_memory_{name}", objective)
    timed = [entry["costs"].assign(memory=name) for name, entry in memories.items()]
    costs = pd.concat(timed, ignore_index=True) if timed else pd.DataFrame(columns=["memory"])
    costs = costs[["memory", *costs.columns.drop("memory")]]
    return {"tokens": pd.DataFrame(tokens), "grid": pd.concat(grids, ignore_index=True)[
                ["component", "lambda", "temperature", "valid_perplexity"]] if grids else pd.DataFrame(),
            "table": pd.DataFrame(rows), "frontier": pd.DataFrame(points), "costs": costs}
