"""Params-precise reruns: a dry run after one change plans exactly the jobs it touches."""

import os
from pathlib import Path

import yaml

from tests.support import ROOT, planned_jobs, snakemake

TINY = yaml.safe_load((ROOT / ".tests/config.yaml").read_text())


def plan(results: Path, tmp_path: Path, change: dict | None = None) -> dict[str, int]:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for section, values in (change or {}).items():
        config[section] = {**config.get(section, {}), **values}
    config["results"] = str(results)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True))  # reordered keys: no rerun
    proc = snakemake("-n", "--configfile", str(path))
    out = proc.stdout + proc.stderr
    return {} if "Nothing to be done" in out else planned_jobs(proc.stdout)


def test_nothing_changed_plans_nothing(tiny_runs, tmp_path):
    assert plan(tiny_runs[0], tmp_path) == {}


def test_exact_index_kind_reruns_index_and_search_not_embedding(tiny_runs, tmp_path):
    jobs = plan(tiny_runs[0], tmp_path, {"knn": {**TINY["knn"], "exact_index": "Flat"}})
    # Macondo's small datastores are searched inside their run's evaluation job (one per run,
    # with a kNN-LM: memorization full seed 0, overspecification seed 0)
    # a Flat index now: trained (nothing to learn) and filled per shard; each shard searched
    # through it, the merges and what reads them; the memory's targets (its queries are the
    # same entries' keys) and its training (it times the search); not the LM pass, the
    # frontier's own PQ datastores or the more-trained LM
    assert jobs == {"index_trained": 1, "index_shard": 2, "knn_shard_search": 2, "knn_merge": 1,
                    "knn_merge_first_shards": 1, "datastore_scaling": 1, "children_eval": 2, "knnlm_grid": 1,
                    "projection": 1, "table1": 1, "knn_gains": 1, "knn_neighbours": 1, "search_fidelity": 1,
                    "memory_target_shard": 2, "memory_targets": 1, "train_memory": 2, "memory_table": 1,
                    "figure1": 1, "figure2": 1, "findings": 1, "all": 1}


def test_stride_reruns_the_corpus_evaluation_not_training(tiny_runs, tmp_path):
    jobs = plan(tiny_runs[0], tmp_path, {"corpus": {**TINY["corpus"], "stride": 32}})
    assert jobs == {"datastore": 2, "knn_queries": 1, "knn_shard_search": 2, "knn_merge": 1, "knn_merge_first_shards": 1,
                    "datastore_scaling": 1, "knnlm_grid": 1, "projection": 1, "table1": 1, "knn_gains": 1,
                    "knn_neighbours": 1, "search_fidelity": 1, "memory_target_queries": 1, "memory_target_shard": 2,
                    "memory_targets": 1, "train_memory": 2, "more_training": 1, "frontier_trained": 2,
                    "frontier_shard": 4, "frontier_pq": 2, "memory_table": 1, "findings": 1, "all": 1}


def test_editing_one_script_reruns_its_rule(tiny_runs, tmp_path):
    script = ROOT / "scripts" / "knnlm_grid.py"
    original, stat = script.read_text(), script.stat()
    try:
        script.write_text(original + "\n# edited by test_editing_one_script_reruns_its_rule\n")
        jobs = plan(tiny_runs[0], tmp_path)
    finally:
        # Snakemake judges scripts by modification time: restore it with the text
        script.write_text(original)
        os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # the grid, and what reads it (the tuned setting of table1 and the memory table; the
    # projection reads it only when tuned)
    assert set(jobs) == {"knnlm_grid", "table1", "memory_table", "findings", "all"}
