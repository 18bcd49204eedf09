"""Cost of the index stage (rules/index.smk): exact (no index), an exact FAISS index, or an
IVF index trained on a sample and filled with every key."""

from ..index import choose, ivf_shape
from .base import Estimate, MB, Job, cost, measured, seconds, unknown


def build(kind: str, n_keys: int, d: int, train_sample: int, threads: int) -> Estimate:
    """Building a FAISS index of `kind` over n_keys keys (trained on train_sample of them)."""
    m = measured()
    if kind in ("Flat", "SQfp16"):
        code = 4 * d if kind == "Flat" else 2 * d
        return Estimate(m["process_mb"] + n_keys * code / MB, 1 + n_keys * d * 1e-9 / 60, disk_mb=n_keys * code / MB)
    nlist, code = ivf_shape(kind, d)
    ids = 8 if nlist > 1 else 0  # an IVF list stores each key's id beside its code
    sample = min(train_sample, n_keys)
    mem = m["process_mb"] + (sample * d * 4 + n_keys * (code + ids) + nlist * d * 4) / MB
    # training: k-means over the sample (25 iterations) and PQ codebooks; adding: each key to its list
    flops = 25 * sample * nlist * d * 2 + n_keys * nlist * d * 2 + n_keys * d * 256 * 2
    return Estimate(mem, 1 + seconds(flops, False, threads) / 60, disk_mb=n_keys * (code + ids) / MB)


@cost("index")
def index(job: Job) -> Estimate:
    size, n_keys = job.corpus_model_size(), job.train
    if n_keys is None or size is None:
        return unknown("datastore size unknown")
    kind = choose(n_keys, job.config["knn"])
    if kind == "exact":
        return Estimate(measured()["light_process_mb"], 1)
    return build(kind, n_keys, size["d"], job.config["knn"]["index_train_sample"], job.threads)
