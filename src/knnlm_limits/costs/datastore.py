"""Cost of the datastore stage (rules/datastore.smk): a forward pass over one shard of the
training split (knn.shards)."""

from .base import Estimate, MB, Job, cost, forward_seconds, gpu_resident, measured, unknown, window_factor


@cost("datastore")
def datastore(job: Job) -> Estimate:
    size, train = job.corpus_model_size(), job.shard_keys(job.train)
    if train is None or size is None:
        return unknown("datastore size unknown", job.uses_gpu)
    m = measured()
    mem = m["process_mb"] + size["params"] * 4 / MB + train * m["datastore_bytes_per_token"] / MB
    secs = forward_seconds(size, train * window_factor(job.config), job.uses_gpu, job.threads)
    disk = train * (2 * size["d"] + 4 + 8) / MB  # float16 keys, int32 values, int64 positions
    return Estimate(mem, secs / 60, gpu_resident(size, job.config["knn"]["batch_tokens"], job.uses_gpu), disk,
                    job.uses_gpu)
