"""What each job costs: host memory, GPU memory, disk and wall time, from the config.

Every estimate is a count of the job's data (tokens, keys, queries, parameters)
times a per-unit cost. Each stage prices its own rules in the module of its name
here (``costs/datastore.py`` for rules/datastore.smk, ...), from the shared
pieces in ``costs/base.py``. Per-unit costs measured on this project's CPU
machines (``benchmarks/job_costs.py`` fits them at three corpus sizes) and the
few that could not be measured here (GPU throughput, random reads on a cluster
file system) live in one file, ``costs.yaml`` beside this module, each marked
measured or assumed.

Sizes come from the config alone, so that a dry run on a fresh checkout plans
the same requests that the jobs later get: the token caps
(``corpus.max_train_tokens``, ``corpus.eval_tokens``) where set, else the split
sizes the config expects (``corpus.expected_tokens``). A size that neither
gives is unknown: the job then requests its ``resources.<kind>`` cap and the
plan says so.

Requests: the estimate times a margin, times the attempt on a retry, kept
between ``resources.<kind>.min_*`` (floor) and ``resources.<kind>.mem_mb`` /
``runtime`` (cap); a job whose estimate exceeds its cap is flagged by the plan.

Nothing here imports torch: the workflow's rules call this while it is planned.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from . import children, corpus, datastore, datastore_scaling, index, inspection, knnlm, memory, table1, train  # noqa: F401  (register)
from .base import (COSTS_FILE, ESTIMATORS, MB, Estimate, Job, model_size, shape_size, small_job, split_tokens,
                   table)

__all__ = ["COSTS_FILE", "Estimate", "MB", "estimate", "model_size", "partition", "record", "request",
           "shape_size", "split_tokens", "table"]

MEM_MARGIN, TIME_MARGIN = 1.3, 1.5  # request = estimate x margin (x attempt on a retry)
# `make plan` sets this to a file: each job's estimate is appended there while the dry run
# plans it (Snakemake's printed resources hold only what a scheduler reads)
ESTIMATES_FILE = "KNNLM_PLAN_ESTIMATES"


def estimate(rule: str, config: dict, wildcards: dict, threads: int = 1, uses_gpu: bool = False,
             base_dir: Path | None = None) -> Estimate:
    """The expected cost of one job of `rule` with these wildcards under `config`; a rule no
    stage prices is a small job (figures, findings, Macondo's text)."""
    fn = ESTIMATORS.get(rule)
    if fn is None:
        return small_job()
    return fn(Job(rule, config, dict(wildcards), threads, uses_gpu, base_dir))


def record(rule: str, wildcards: dict, est: Estimate) -> None:
    """Append one job's estimate to the file `make plan` asked for (nothing otherwise)."""
    path = os.environ.get(ESTIMATES_FILE)
    if not path:
        return
    row = {"rule": rule, "wildcards": {k: str(v) for k, v in wildcards.items()}, "known": est.known,
           "mem_mb": est.mem_mb, "minutes": est.minutes, "gpu_mem_mb": est.gpu_mem_mb, "disk_mb": est.disk_mb,
           "notes": est.notes}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def request(est: Estimate, caps: dict, attempt: int = 1) -> dict:
    """Snakemake resources for a job: estimate x margin x attempt, between floor and cap."""
    mem_cap, time_cap = caps["mem_mb"], caps["runtime"]
    if not est.known:
        return {"mem_mb": mem_cap, "runtime": time_cap}
    mem = max(caps["min_mem_mb"], math.ceil(est.mem_mb * MEM_MARGIN * attempt))
    runtime = max(caps["min_runtime"], math.ceil(est.minutes * TIME_MARGIN * attempt))
    return {"mem_mb": min(mem, mem_cap), "runtime": min(runtime, time_cap)}


def partition(config: dict, est: Estimate, runtime: int) -> str:
    """The first partition in cluster.partitions with what the job needs: a GPU with enough
    memory (or none), and time. If none has the time, the one with the most; if none has
    the GPU memory, the one with the most (the plan flags both)."""
    parts = config["cluster"]["partitions"]
    kind = [p for p in parts if (p["gpu_mem_mb"] > 0) == est.uses_gpu] or parts
    fits = [p for p in kind if p["gpu_mem_mb"] >= est.gpu_mem_mb] or [max(kind, key=lambda p: p["gpu_mem_mb"])]
    timely = [p for p in fits if p["max_runtime"] >= runtime] or [max(fits, key=lambda p: p["max_runtime"])]
    return timely[0]["name"]
