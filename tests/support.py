"""Helpers the tests share: the repository root and running the snakemake CLI."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_WIKITEXT = (ROOT.parent / "shared" / "data" / "wikitext-2").resolve()
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, check=True, timeout=1800):
    """Run the snakemake CLI in the repository (under a hard kill timeout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = ["timeout", "-s", "KILL", str(timeout), *SNAKEMAKE, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


# every job of one corpus kNN-LM point of the tiny DAG: 2 shards, exact search (no index),
# 2 PQ code sizes, the memory and its alpha-0 control
ONE_POINT = {"datastore": 2, "knn_queries": 1, "knn_shard_search": 2, "knn_merge": 1, "knn_merge_first_shards": 1,
             "datastore_scaling": 1, "knnlm_grid": 1, "projection": 1, "table1": 1, "knn_gains": 1,
             "knn_neighbours": 1, "search_fidelity": 1, "memory_target_queries": 1, "memory_target_shard": 2,
             "memory_targets": 1, "train_memory": 2, "frontier_trained": 2, "frontier_shard": 4,
             "frontier_pq": 2, "memory_table": 1}


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def default_locales():
    from knnlm_limits.config import validate

    return validate({})["macondo"]["name_locales"]


def synthetic_tokenizer(vocab_size: int = 4096):
    """A BPE trained on the workflow's own synthetic corpus (no data needed)."""
    from knnlm_limits.corpus import synthetic_lines
    from knnlm_limits.tokenizer import train_bpe

    return train_bpe(synthetic_lines(1500, seed=[0, 0]), vocab_size)
