"""Cost of the kNN-LM search (rules/knnlm.smk): the LM over the evaluation splits, then each
position's k neighbours, one split after the other, SEARCH_BATCH queries at a time."""

from ..index import EXACT_KINDS, choose, exact_block_rows, ivf_shape
from .base import (SEARCH_BATCH, Estimate, MB, Job, assumed, cost, forward_seconds, gpu_resident, lm_pass_mb,
                   measured, seconds, unknown, window_factor)


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
        return held, temporaries, seconds(2 * queries * n_keys * d, False, threads)
    nlist, code = ivf_shape(kind, d)
    held += n_keys * (code + (8 if nlist > 1 else 0)) / MB
    temporaries = batch * k * m["approximate_search_bytes_per_neighbour"] / MB
    scanned = queries * n_keys * min(1.0, config["knn"]["nprobe"] / nlist)
    secs = scanned * code * m["pq_seconds_per_code_byte"] / max(1, threads)
    if rerank:
        secs += queries * k * assumed()["random_read_seconds"] / max(1, threads)
    return held, temporaries, secs


@cost("knn_search")
def knn_search(job: Job) -> Estimate:
    size, n_keys, valid, test = job.corpus_model_size(), job.train, job.valid, job.test
    if None in (n_keys, valid, test) or size is None:
        return unknown("split or datastore size unknown", job.uses_gpu)
    knn, d = job.config["knn"], size["d"]
    kind = choose(n_keys, knn)
    queries = valid + test
    held, temporaries, secs = search(job.config, n_keys, d, queries, max(valid, test), kind, job.threads, knn["rerank"])
    # the LM pass and the search run one after the other: the larger of their peaks (the
    # LM's logits are on the GPU where it runs on one)
    lm_pass = 0.0 if job.uses_gpu else lm_pass_mb(job.config, size)
    mem = measured()["process_mb"] + size["params"] * 4 / MB + held + max(temporaries, lm_pass)
    secs += forward_seconds(size, queries * window_factor(job.config), job.uses_gpu, job.threads)
    if kind not in EXACT_KINDS:  # the sampled test queries searched exactly too (search_fidelity)
        secs += seconds(2 * min(knn["fidelity_queries"], test) * n_keys * d, False, job.threads)
    k = min(knn["k"], n_keys)
    disk = queries * 8 * k / MB + test * 8 * k / MB + queries * 4 * d / MB  # neighbours; test ids; queries
    return Estimate(mem, secs / 60, gpu_resident(size, knn["batch_tokens"], job.uses_gpu), disk, job.uses_gpu)
