"""Cost of the index stage (rules/index.smk): an approximate index trained once on a sample
(index_trained), then filled with each shard's keys (index_shard); exact search has none."""

from ..index import ivf_shape, planned_kind
from .base import Estimate, MB, Job, cost, measured, seconds, unknown


def build(kind: str, n_keys: int, d: int, train_sample: int, threads: int, sample_of: int | None = None) -> Estimate:
    """Building a FAISS index of `kind`: trained on train_sample of `sample_of` keys (0: trained
    already, a shard's copy), then filled with n_keys keys (0: the trained index alone)."""
    m = measured()
    if kind in ("Flat", "SQfp16"):
        code = 4 * d if kind == "Flat" else 2 * d
        return Estimate(m["process_mb"] + n_keys * code / MB, 1 + n_keys * d * 1e-9 / 60, disk_mb=n_keys * code / MB)
    nlist, code = ivf_shape(kind, d)
    ids = 8 if nlist > 1 else 0  # an IVF list stores each key's id beside its code
    sample = min(train_sample, n_keys if sample_of is None else sample_of)
    mem = m["process_mb"] + (sample * d * 4 + n_keys * (code + ids) + nlist * d * 4) / MB
    # training: k-means over the sample (25 iterations) and PQ codebooks; adding: each key to its list
    flops = 25 * sample * nlist * d * 2 + n_keys * nlist * d * 2 + n_keys * d * 256 * 2
    return Estimate(mem, 1 + seconds(flops, False, threads) / 60, disk_mb=(n_keys * (code + ids) + nlist * d * 4) / MB)


@cost("index_trained")
def index_trained(job: Job) -> Estimate:
    size, n_keys = job.corpus_model_size(), job.train
    if n_keys is None or size is None:
        return unknown("datastore size unknown")
    return build(planned_kind(job.config), 0, size["d"], job.config["knn"]["index_train_sample"], job.threads,
                 sample_of=n_keys)


@cost("index_shard")
def index_shard(job: Job) -> Estimate:
    size, n_keys = job.corpus_model_size(), job.shard_keys(job.train)
    if n_keys is None or size is None:
        return unknown("datastore size unknown")
    return build(planned_kind(job.config), n_keys, size["d"], 0, job.threads, sample_of=0)
