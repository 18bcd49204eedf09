"""Params-precise reruns: a dry run after one change plans exactly the jobs it touches."""

import os
from pathlib import Path

import yaml

from tests.conftest import ROOT, needs_wikitext, planned_jobs, snakemake

pytestmark = needs_wikitext

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


def test_lambda_reruns_only_interpolation_and_downstream(tiny_runs, tmp_path):
    jobs = plan(tiny_runs[0], tmp_path, {"knn": {**TINY["knn"], "lambda": 0.5}})
    assert set(jobs) == {"children_loglik", "projection", "table1", "figure1", "figure2", "all"}


def test_index_factory_reruns_index_and_downstream_not_embedding(tiny_runs, tmp_path):
    jobs = plan(tiny_runs[0], tmp_path, {"knn": {**TINY["knn"], "index": "Flat"}})
    assert {"index", "knn_search", "table1", "figure1", "figure2"} <= set(jobs)
    assert not {"datastore", "train_corpus_lm", "train_memorization", "train_overspecification",
                "train_scale", "corpus_tokens", "tokenizer", "macondo", "chat_loglik", "figure3"} & set(jobs)
    # one index per datastore: corpus LM + full-variant memorization checkpoints + overspec checkpoints
    assert jobs["index"] == 1 + 2 + 2


def test_adding_a_seed_adds_only_that_seeds_jobs(tiny_runs, tmp_path):
    mem = {**TINY["memorization"], "seeds": [0, 1]}
    jobs = plan(tiny_runs[0], tmp_path, {"memorization": mem})
    assert jobs["train_memorization"] == 2  # full and no_last_mlp, seed 1 only
    assert jobs["datastore"] == jobs["index"] == jobs["knn_search"] == 2  # full variant, steps 0 and 10
    assert jobs["children_loglik"] == 2
    assert set(jobs) == {"train_memorization", "datastore", "index", "knn_search", "children_loglik", "figure1", "all"}


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
    # the grid, and what reads the grid (projection with a tuned setting, table1)
    assert set(jobs) == {"knnlm_grid", "projection", "table1", "all"}
