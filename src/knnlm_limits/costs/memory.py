"""Costs of the parametric-memory stage (rules/memory.smk): the kNN targets of the sampled
entries (their keys gathered, a search of that many queries a shard: its cost grows with
memory.kl_positions, and the merge), the memory's training and evaluation, the more-training
control, the frontier's product-quantised datastores (trained once, a job a shard, merged)
and the table."""

from .. import memory
from ..index import planned_kind, reranks
from .base import (Estimate, MB, Job, assumed, cost, forward_seconds, lm_pass_mb, measured, positions_bytes, seconds,
                   small_job, unknown, window_factor)
from .index import build
from .knnlm import answer_bytes, merge_estimate, search
from .train import training


def _memory_params(job: Job, size: dict, expansion: int) -> dict:
    m = job.config["memory"]
    return memory.parameters(size["d"], size["vocab"], m["layers"], expansion)


def _kl_queries(job: Job, n_keys: int) -> int:
    return min(job.config["memory"]["kl_positions"] or n_keys, n_keys)


@cost("memory_target_queries")
def memory_target_queries(job: Job) -> Estimate:
    size, n_keys = job.corpus_model_size(), job.train
    if n_keys is None or size is None:
        return unknown("datastore size unknown")
    queries = _kl_queries(job, n_keys)
    est = small_job()
    est.mem_mb += queries * size["d"] * 6 / MB  # the float16 rows read and their float32 copy
    # the positions read through in chunks; the sampled keys, random reads
    est.minutes += (n_keys * 8 / 1e9 + queries * assumed()["random_read_seconds"]) / 60
    est.disk_mb = queries * (size["d"] * 4 + 8) / MB
    return est


@cost("memory_target_shard")
def memory_target_shard(job: Job) -> Estimate:
    size, n_keys = job.corpus_model_size(), job.train
    if n_keys is None or size is None:
        return unknown("datastore size unknown")
    knn, shard = job.config["knn"], job.shard_keys(n_keys)
    queries = _kl_queries(job, n_keys)
    kind = planned_kind(job.config)
    rerank = reranks(kind, knn["rerank"])
    held, temporaries, secs = search(job.config, shard, size["d"], queries, queries, kind, job.threads, rerank)
    k = min(knn["k"] + 1, shard)
    return Estimate(measured()["light_process_mb"] + held + temporaries + queries * size["d"] * 4 / MB, 1 + secs / 60,
                    disk_mb=queries * k * answer_bytes(job.config, rerank) / MB)


@cost("memory_targets")
def memory_targets(job: Job) -> Estimate:
    n_keys = job.train
    if n_keys is None:
        return unknown("datastore size unknown")
    queries, k = _kl_queries(job, n_keys), min(job.config["knn"]["k"] + 1, n_keys)
    est = merge_estimate(job, job.shards, 0, queries, k, False)
    est.disk_mb = queries * k * 6 / MB  # int32 values, float16 weights
    return est


@cost("train_memory")
def train_memory(job: Job) -> Estimate:
    size, n_keys, valid, test = job.corpus_model_size(), job.train, job.valid, job.test
    if None in (n_keys, valid, test) or size is None:
        return unknown("datastore or split size unknown", job.uses_gpu)
    m, knn = job.config["memory"], job.config["knn"]
    counts = _memory_params(job, size, int(job.wildcards["expansion"]))
    params = counts["body"] + counts["head"]
    batch = m["batch_size"]
    # weights, gradients and AdamW moments; one chunk of (batch, V) float32 logits and softmax;
    # the batch's kNN targets; the values file's pages; one split's queries and log-probs
    state = 16 * params + batch * size["vocab"] * 4 * 2 + batch * knn["k"] * 16
    mem = measured()["process_mb"] + (state + n_keys * 4 + max(valid, test) * (4 * size["d"] + 8)) / MB
    flops = memory.training_flops(counts, m["head"], n_keys, m["epochs"])
    secs = seconds(flops, job.uses_gpu, job.threads) + seconds(2 * params * (valid + test), job.uses_gpu, job.threads,
                                                               float32=True)
    kind = planned_kind(job.config)
    held, temporaries, search_secs = search(job.config, n_keys, size["d"], m["timing_queries"], m["timing_queries"],
                                            kind, job.threads, knn["rerank"])
    secs += 3 * search_secs  # the search timed beside the memory: a warm-up, then the best of two
    gpu = (state / MB) if job.uses_gpu else 0.0
    return Estimate(mem + held + temporaries, 1 + secs / 60, gpu, 4 * params * 4 / MB, job.uses_gpu)


@cost("more_training")
def more_training(job: Job) -> Estimate:
    size, n_keys, valid, test = job.corpus_model_size(), job.train, job.valid, job.test
    if None in (n_keys, valid, test) or size is None:
        return unknown("datastore or split size unknown", job.uses_gpu)
    m, train = job.config["memory"], job.config["corpus_lm"]["train"]
    block = job.config["corpus"]["block_size"]
    counts = _memory_params(job, size, m["expansion"])
    budget = memory.imitation_flops(counts, m["head"], n_keys, m["epochs"], size["d"],
                                    memory.target_search_settings(job.config["knn"], m, planned_kind(job.config)))
    steps = memory.more_training_steps(m["control_budget"], budget, size["params"], train["batch_size"] * block,
                                       m["epochs"], n_keys)
    est = training(job, size, {**train, "checkpoints": [steps]}, block, data_tokens=n_keys, steps=steps)
    est.minutes += forward_seconds(size, (valid + test) * window_factor(job.config), job.uses_gpu, job.threads) / 60
    # then an LM pass over the evaluation splits, its training state gone: its logits live
    # where the model runs
    evaluation = size["params"] * 4 / MB + lm_pass_mb(job.config, size)
    if job.uses_gpu:
        est.gpu_mem_mb = max(est.gpu_mem_mb, evaluation)
    else:
        est.mem_mb = max(est.mem_mb, measured()["process_mb"] + evaluation)
    return est


@cost("frontier_trained")
def frontier_trained(job: Job) -> Estimate:
    size, n_keys = job.corpus_model_size(), job.train
    if n_keys is None or size is None:
        return unknown("datastore size unknown")
    m = job.config["memory"]
    factory = m["frontier_index"].format(code=job.wildcards["code"])
    return build(factory, 0, size["d"], m["frontier_train_sample"], job.threads, sample_of=n_keys)


@cost("frontier_shard")
def frontier_shard(job: Job) -> Estimate:
    size, n_keys, valid, test = job.corpus_model_size(), job.shard_keys(job.train), job.valid, job.test
    if None in (n_keys, valid, test) or size is None:
        return unknown("datastore or split size unknown")
    factory = job.config["memory"]["frontier_index"].format(code=job.wildcards["code"])
    built = build(factory, n_keys, size["d"], 0, job.threads, sample_of=0)
    held, temporaries, secs = search(job.config, n_keys, size["d"], valid + test, max(valid, test), factory,
                                     job.threads)
    mem = measured()["light_process_mb"] + max(built.mem_mb - measured()["process_mb"], 0) + held + temporaries
    k = min(job.config["knn"]["k"], n_keys)
    return Estimate(mem, built.minutes + secs / 60,
                    disk_mb=built.disk_mb + (valid + test) * k * answer_bytes(job.config, False) / MB)


@cost("frontier_pq")
def frontier_pq(job: Job) -> Estimate:
    n_keys, valid, test = job.train, job.valid, job.test
    if None in (n_keys, valid, test):
        return unknown("datastore or split size unknown")
    return merge_estimate(job, job.shards, max(valid, test), valid + test, min(job.config["knn"]["k"], n_keys), False)


@cost("memory_table")
def memory_table(job: Job) -> Estimate:
    valid, test = job.valid, job.test
    if valid is None or test is None:
        return unknown("split size unknown")
    codes = len(job.config["memory"]["frontier_pq"])
    held = max(valid, test) * positions_bytes(job.config)  # one split's neighbours at a time
    columns = 8 + 3 * (2 + len(job.config["memory"]["sizes"])) + 2 * codes
    est = small_job()
    est.mem_mb += (held * measured()["interpolation_overhead"] + test * columns * 8 * 3) / MB
    est.minutes += (valid + test) * job.config["knn"]["k"] * measured()["interpolation_seconds_per_cell"] \
        * (1 + codes * len(job.config["table1"]["grid"]["temperature"])) / 60
    return est
