"""Costs of looking inside the kNN-LM (rules/inspection.smk): small jobs over the stored
search results of the test split."""

from .base import Estimate, MB, Job, cost, measured, positions_bytes, unknown


@cost("knn_gains")
def knn_gains(job: Job) -> Estimate:
    test, train = job.test, job.train
    if test is None or train is None:
        return unknown("split size unknown")
    m, k = measured(), job.config["knn"]["k"]
    # the search results, a per-token table (~10 columns) and the training stream
    mem = m["light_process_mb"] + test * (positions_bytes(job.config) * m["interpolation_overhead"] + 200) / MB \
        + train * 4 / MB
    return Estimate(mem, 1 + (test * k * m["interpolation_seconds_per_cell"] + train * 2e-9) / 60,
                    disk_mb=test * 120 / MB)


@cost("search_fidelity")
def search_fidelity(job: Job) -> Estimate:
    if job.test is None:
        return unknown("split size unknown")
    m = measured()
    return Estimate(m["light_process_mb"] + job.test * positions_bytes(job.config) / MB, m["small_job_minutes"],
                    disk_mb=1.0)


@cost("knn_neighbours")
def knn_neighbours(job: Job) -> Estimate:
    test, train = job.test, job.train
    if test is None or train is None:
        return unknown("split size unknown")
    m = measured()
    # the search results, both token streams; the ids and positions are memory maps read
    # only at the sampled rows
    mem = m["light_process_mb"] + test * positions_bytes(job.config) / MB + (train + test) * 4 / MB
    return Estimate(mem, m["small_job_minutes"], disk_mb=1.0)
