"""Costs of the Macondo evaluations (rules/children.smk, rules/chat.smk): every checkpoint
of a run loaded and run over its prompts (and its sentences, for a kNN-LM)."""

from .. import memory
from .base import Estimate, MB, Job, cost, forward_seconds, gpu_resident, measured, seconds, unknown


def evaluation(job: Job, size: dict | None, n_checkpoints: int) -> Estimate:
    if size is None:
        return unknown("model size unknown", job.uses_gpu)
    m = measured()
    tokens = m["macondo_eval_tokens"] * n_checkpoints
    mem = m["process_mb"] + 2 * size["params"] * 4 / MB + m["macondo_eval_mb"]
    secs = forward_seconds(size, tokens, job.uses_gpu, job.threads) + n_checkpoints * m["checkpoint_load_seconds"]
    return Estimate(mem, 1 + secs / 60, gpu_resident(size, 8192, job.uses_gpu), 0.0, job.uses_gpu)


@cost("children_eval")
def children_eval(job: Job) -> Estimate:
    experiment = job.wildcards["experiment"]
    if experiment == "memorization":
        size = job.shape("memorization", job.wildcards["shape"])
    else:
        size = job.named_size(job.config["overspecification"]["base_model"])
    n_checkpoints = len(job.config[experiment]["train"]["checkpoints"])
    est = evaluation(job, size, n_checkpoints)
    if job.wildcards.get("memory") and est.known:  # Figure 2's memories of the run's datastore
        m = job.config["memory"]
        counts = memory.parameters(size["d"], size["vocab"], m["layers"], m["expansion"])
        entries = measured()["macondo_eval_tokens"]
        flops = memory.training_flops(counts, m["head"], entries, m["figure2_epochs"])
        memories = n_checkpoints if m["figure2"] == "all" else 1
        est.minutes += memories * seconds(flops, job.uses_gpu, job.threads) / 60
        est.mem_mb += (16 * (counts["body"] + counts["head"]) + m["figure2_batch_size"] * size["vocab"] * 8) / MB
    return est


@cost("figure3")
def figure3(job: Job) -> Estimate:
    return evaluation(job, job.named_size(job.config["chat"]["model"]), 1)
