"""The Snakemake DAG: dry-run planning, and the whole tiny DAG for real."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, needs_wikitext

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def test_dry_run_plans_the_default_dag(tmp_path):
    proc = snakemake("-n", "--config", f"results={tmp_path}/results")
    jobs = planned_jobs(proc.stdout)
    expected = {"corpus", "tokenizer", "macondo", "train_corpus_lm", "train_memorization", "datastore",
                "index", "knn_search", "projection", "table1", "figure1", "figure2", "figure3"}
    assert expected <= set(jobs)
    assert jobs["train_memorization"] == 4  # 2 variants x 2 seeds
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


def test_bad_config_fails_before_any_job(tmp_path):
    proc = snakemake("-n", "--config", "knn={'k': 'many'}", f"results={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "knn.k" in proc.stdout + proc.stderr


FIGURE_CSVS = ["figures/figure1.csv", "figures/figure1_children.csv", "figures/figure2_children.csv",
               "figures/figure3_children.csv", "table1/table1.csv", "table1/grid.csv",
               "table1/projection_traces.csv"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    if not (ROOT.parent / "shared" / "data" / "wikitext-2" / "valid.txt").is_file():
        pytest.skip("needs ../shared/data/wikitext-2")
    out = []
    for name in ("a", "b"):
        results = tmp_path_factory.mktemp(name) / "results"
        snakemake("--cores", "2", "--configfile", ".tests/config.yaml", "--config", f"results={results}")
        out.append(results)
    return out


@needs_wikitext
def test_tiny_dag_produces_every_result(tiny_runs):
    results = tiny_runs[0]
    for rel in FIGURE_CSVS + ["figures/figure1.png", "figures/figure2.pdf", "figures/figure3.png",
                              "table1/table1.md", "table1/projection_traces.png", "table1/grid.png"]:
        assert (results / rel).stat().st_size > 0, rel
    table = pd.read_csv(results / "table1/table1.csv")
    for col in ("ppl_lm", "ppl_knnlm", "ppl_proj_f", "ppl_proj_fg"):
        assert table[col].item() > 1
    fig1 = pd.read_csv(results / "figures/figure1_children.csv")
    assert set(fig1.variant) == {"full", "no_last_mlp"} and set(fig1.step) == {0, 10}
    assert set(fig1[fig1.variant == "full"].method) == {"lm", "knn", "knnlm"}
    assert {"parent", "child", "n_children", "step", "seed", "variant", "method", "loglik"} <= set(fig1.columns)
    # every log goes to its file
    assert (results / "logs/train/corpus_lm.log").read_text().strip()


@needs_wikitext
def test_two_runs_write_identical_csvs(tiny_runs):
    a, b = tiny_runs
    for rel in FIGURE_CSVS:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@needs_wikitext
def test_nothing_to_do_after_a_complete_run(tiny_runs):
    proc = snakemake("-n", "--configfile", ".tests/config.yaml", "--config", f"results={tiny_runs[0]}")
    assert "Nothing to be done" in proc.stdout + proc.stderr
