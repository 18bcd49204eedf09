"""Cost of the datastore-size curve (rules/datastore_scaling.smk): each size's (lambda, T) grid
over its validation neighbours and its test perplexities, one size's neighbours held at a
time, and the bootstraps over the test tokens."""

from ..config import datastore_sizes
from .base import Estimate, MB, Job, cost, measured, positions_bytes, small_job, unknown


@cost("datastore_scaling")
def datastore_scaling(job: Job) -> Estimate:
    valid, test = job.valid, job.test
    if valid is None or test is None:
        return unknown("split size unknown")
    m, grid, k = measured(), job.config["table1"]["grid"], job.config["knn"]["k"]
    sizes = len(datastore_sizes(job.config["knn"]))
    est = small_job()
    est.mem_mb += (max(valid, test) * positions_bytes(job.config) * m["interpolation_overhead"]
                   + test * (1 + 2 * sizes) * 8 * 3) / MB
    cells = sizes * (valid * k * len(grid["temperature"]) + test * k * 2)
    resamples = job.config["findings"]["bootstrap_resamples"] * test * (1 + 2 * sizes) * 3  # 3 bootstraps a column
    est.minutes += (cells * m["interpolation_seconds_per_cell"] + resamples * 1e-9) / 60
    return est
