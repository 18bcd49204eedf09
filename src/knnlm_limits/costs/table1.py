"""Costs of Table 1 (rules/table1.smk): the (lambda, T) grid and the table read the stored
neighbours; the projection solves for z per projected token on the LM's last layers."""

from .base import (Estimate, MB, Job, cost, forward_seconds, measured, positions_bytes, seconds, unknown,
                   window_factor)


@cost("knnlm_grid", "table1")
def interpolation(job: Job) -> Estimate:
    n = job.valid if job.rule == "knnlm_grid" else job.test
    if n is None:
        return unknown("split size unknown")
    m, grid, k = measured(), job.config["table1"]["grid"], job.config["knn"]["k"]
    cells = len(grid["lambda"]) * len(grid["temperature"])
    work = n * k * (len(grid["temperature"]) if job.rule == "knnlm_grid" else 3)
    mem = m["light_process_mb"] + n * (positions_bytes(job.config) * m["interpolation_overhead"]) / MB
    return Estimate(mem, 1 + (work * m["interpolation_seconds_per_cell"] + cells * n * 1e-8) / 60)


@cost("projection")
def projection(job: Job) -> Estimate:
    size, test = job.corpus_model_size(), job.test
    if test is None or size is None:
        return unknown("split or model size unknown", job.uses_gpu)
    m, p = measured(), job.config["table1"]["projection"]
    rows = min(p["tokens"], test)
    batch = min(p["batch"], rows)
    # per batch row: the (V,) target, logits, softmax and gradient in float32, a few times over
    solver_mb = batch * size["vocab"] * 4 * m["projection_vocab_arrays"] / MB
    mem = (m["process_mb"] + size["params"] * 4 / MB + test * positions_bytes(job.config) / MB
           + (0 if job.uses_gpu else solver_mb))
    iterations = p["steps"] * 2 + p["lbfgs_steps"] * 2  # f and f∘g by Adam, f by L-BFGS (with line search)
    flops = rows * iterations * 6 * size["vocab"] * size["d"]
    secs = (seconds(flops, job.uses_gpu, job.threads, float32=True)  # the solver runs in float32
            + forward_seconds(size, test * window_factor(job.config), job.uses_gpu, job.threads))
    gpu = (solver_mb + size["params"] * 4 / MB) if job.uses_gpu else 0.0
    return Estimate(mem, secs / 60, gpu, 0.0, job.uses_gpu)
