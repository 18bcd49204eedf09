"""The Snakemake DAG: dry-run planning, and the whole tiny DAG for real."""

import pandas as pd
import pytest

from tests.conftest import ROOT, needs_wikitext, planned_jobs, snakemake

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
