"""Costs of the kNN-LM stage (rules/knnlm.smk): the LM pass over the evaluation splits
(knn_queries), each shard's search for every query, one split after the other, SEARCH_BATCH
queries at a time (knn_shard_search), and the merges of the shards' answers."""

from ..index import EXACT_KINDS, exact_block_rows, ivf_shape, planned_kind, reranks
from .base import (SEARCH_BATCH, Estimate, MB, Job, assumed, cost, forward_seconds, gpu_resident, lm_pass_mb,
                   measured, search_threads, unknown, window_factor)


def exact_seconds(queries: int, n_keys: int, d: int, threads: int) -> float:
    """Exact search of `queries` queries among n_keys keys of width d: a BLAS pass."""
    return 2 * queries * n_keys * d / (measured()["cpu_flops_per_thread"] * search_threads(threads, "exact"))


def search(config: dict, n_keys: int, d: int, queries: int, biggest: int, kind: str, threads: int,
           rerank: bool = False) -> tuple[float, float, float]:
    """(MB held, MB of one batch's temporaries, seconds) of searching `queries` queries (at
    most `biggest` held at once) among n_keys keys of width d through an index of `kind`.

    Held: the biggest split's k neighbour distances and values (8 bytes each) and queries,
    and an approximate index (read whole). A batch: its results and merge heap, and for exact
    search its float32 key block (index.exact_search).
    """
    m, k = measured(), min(config["knn"]["k"], n_keys)
    batch = min(SEARCH_BATCH, biggest)
    held = biggest * (8 * k + 4 * d + m["search_bytes_per_position"]) / MB
    if kind in EXACT_KINDS:
        temporaries = (exact_block_rows(n_keys, k, d) * d * 4 + batch * k * m["exact_search_bytes_per_neighbour"]) / MB
        return held, temporaries, exact_seconds(queries, n_keys, d, threads)
    nlist, code = ivf_shape(kind, d)
    held += n_keys * (code + (8 if nlist > 1 else 0)) / MB
    temporaries = batch * k * m["approximate_search_bytes_per_neighbour"] / MB
    scanned = queries * n_keys * min(1.0, config["knn"]["nprobe"] / nlist)
    secs = scanned * code * m["pq_seconds_per_code_byte"] / search_threads(threads, "pq")
    if rerank:
        secs += queries * k * assumed()["random_read_seconds"] / max(1, threads)
    return held, temporaries, secs


@cost("knn_queries")
def knn_queries(job: Job) -> Estimate:
    """The LM over the evaluation windows: its log-probs and query keys of both splits."""
    size, valid, test = job.corpus_model_size(), job.valid, job.test
    if None in (valid, test) or size is None:
        return unknown("split size unknown", job.uses_gpu)
    queries = valid + test
    # a split's queries and per-position arrays, and a batch's logits where the LM runs on the CPU
    held = max(valid, test) * (4 * size["d"] + 20) / MB
    lm_pass = 0.0 if job.uses_gpu else lm_pass_mb(job.config, size)
    mem = measured()["process_mb"] + size["params"] * 4 / MB + held + lm_pass
    secs = forward_seconds(size, queries * window_factor(job.config), job.uses_gpu, job.threads)
    disk = queries * (4 * size["d"] + 20) / MB
    return Estimate(mem, 1 + secs / 60, gpu_resident(size, job.config["knn"]["batch_tokens"], job.uses_gpu), disk,
                    job.uses_gpu)


def answer_bytes(config: dict, rerank: bool) -> int:
    """Bytes of one query's answer from one shard, per neighbour: distance, id, value (and the
    exact distance where re-ranked)."""
    return 4 + 8 + 4 + (4 if rerank else 0)


@cost("knn_shard_search")
def knn_shard_search(job: Job) -> Estimate:
    size, n_keys, valid, test = job.corpus_model_size(), job.shard_keys(job.train), job.valid, job.test
    if None in (n_keys, valid, test) or size is None:
        return unknown("split or datastore size unknown")
    knn, d = job.config["knn"], size["d"]
    kind = planned_kind(job.config)
    queries = valid + test
    rerank = reranks(kind, knn["rerank"])
    held, temporaries, secs = search(job.config, n_keys, d, queries, max(valid, test), kind, job.threads, rerank)
    k = min(knn["k"], n_keys)
    batch = min(SEARCH_BATCH, max(valid, test))
    # the written answer replaces the held arrays; a batch's answer is sorted by (distance, id)
    mem = measured()["light_process_mb"] + held + temporaries + batch * k * 24 / MB
    if kind not in EXACT_KINDS:  # the sampled test queries answered exactly too (search_fidelity)
        secs += exact_seconds(min(knn["fidelity_queries"], test), n_keys, d, job.threads)
    disk = queries * k * answer_bytes(job.config, rerank) / MB
    return Estimate(mem, 1 + secs / 60, disk_mb=disk)


def merge_estimate(job: Job, shards: int, rows_held: int, rows_merged: int, k: int, with_ids: bool) -> Estimate:
    """Merging `shards` answers of k neighbours for rows_merged queries, MERGE_ROWS at a time,
    holding rows_held queries' merged distances and values."""
    from ..shards import MERGE_ROWS

    m = measured()
    chunk = min(MERGE_ROWS, rows_merged) * shards * k * m["merge_bytes_per_candidate"]
    mem = m["light_process_mb"] + (rows_held * k * 8 + chunk) / MB
    secs = rows_merged * shards * k * m["merge_seconds_per_candidate"]
    return Estimate(mem, 1 + secs / 60, disk_mb=rows_merged * k * (8 + (8 if with_ids else 0)) / MB)


@cost("knn_merge", "knn_merge_first_shards")
def knn_merge(job: Job) -> Estimate:
    n_keys, valid, test = job.train, job.valid, job.test
    if None in (n_keys, valid, test):
        return unknown("split or datastore size unknown")
    shards = job.shards if job.rule == "knn_merge" else int(job.wildcards["size"])
    k = min(job.config["knn"]["k"], n_keys)
    return merge_estimate(job, shards, max(valid, test), valid + test, k, job.rule == "knn_merge")
