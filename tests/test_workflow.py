"""The Snakemake DAG: dry-run planning of every shipped config, and whole DAGs for real:
the tiny config (synthetic corpus, twice), the paper-scale rehearsal, and real text where
../shared/data/wikitext-2 exists."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from knnlm_limits import findings, knnlm
from tests.support import ROOT, SHARED_WIKITEXT, planned_jobs, snakemake


def test_dry_run_plans_the_default_dag(tmp_path):
    proc = snakemake("-n", "--config", f"results={tmp_path}/results")
    jobs = planned_jobs(proc.stdout)
    expected = {"corpus", "tokenizer", "macondo", "train_corpus_lm", "train_memorization", "datastore", "knn_queries",
                "knn_shard_search", "knn_merge", "projection", "table1", "datastore_scaling", "figure1", "figure2",
                "figure3", "findings"}
    assert expected <= set(jobs)
    # one evaluation job per Macondo run: 2 variants x 2 seeds (Figure 1), 2 seeds (Figure 2)
    assert jobs["train_memorization"] == 4 and jobs["train_overspecification"] == 2
    assert jobs["children_eval"] == 4 + 2 and jobs["knn_merge"] == 1
    # two shards: a datastore and a search job each; exact search, so no index job
    assert jobs["datastore"] == jobs["knn_shard_search"] == 2 and "index_shard" not in jobs
    assert not (tmp_path / "results").exists()  # a dry run writes nothing


@pytest.mark.parametrize("configs, expected", [
    (["config/paper.yaml"], {"train_memorization": 10, "children_eval": 15, "train_overspecification": 5,
                             "import_pretrained": 2, "knn_merge": 1, "index_trained": 1, "index_shard": 16,
                             "knn_shard_search": 16, "knn_merge_first_shards": 4}),
    (["config/pretrained.yaml"], {"import_pretrained": 1, "knn_merge": 1, "projection": 1, "index_shard": None}),
    (["config/plan-1b.yaml"], {"datastore": 64, "index_shard": 64, "knn_shard_search": 64, "knn_merge": 1,
                               "knn_merge_first_shards": 6}),
    (["config/wikitext2-local.yaml", "config/sweep.yaml"], {"train_corpus_lm": 6, "table1": 6, "train_memorization": 20}),
    (["config/paper.yaml", "config/paper-sweep.yaml"], {"train_corpus_lm": 6, "table1": 6, "train_memorization": 20}),
    (["config/rehearsal.yaml"], {"import_pretrained": 3, "table1": 3, "train_memorization": 8}),
])
def test_shipped_configs_plan_offline(tmp_path, configs, expected):
    proc = snakemake("-n", "--configfile", *configs, "--config", f"results={tmp_path}/r")
    jobs = planned_jobs(proc.stdout)
    assert {k: jobs.get(k) for k in expected} == expected


def test_bad_config_fails_before_any_job(tmp_path):
    proc = snakemake("-n", "--config", "knn={'k': 'many'}", f"results={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "knn.k" in proc.stdout + proc.stderr


RESULT_CSVS = ["figure1/tiny/figure1.csv", "figure1/tiny/children.csv", "figure2/children.csv", "figure3/children.csv",
               "table1/corpus_lm/tiny/step-20/mlp_input/table1.csv", "table1/corpus_lm/tiny/step-20/mlp_input/grid.csv",
               "table1/corpus_lm/tiny/step-20/mlp_input/projection_traces.csv", "findings.csv", "findings_by_scale.csv",
               "table1/corpus_lm/tiny/step-20/mlp_input/gain_by_frequency.csv", "table1/corpus_lm/tiny/step-20/mlp_input/gain_tokens.csv",
               "table1/corpus_lm/tiny/step-20/mlp_input/neighbours.csv", "perplexity_by_key.csv",
               *(f"table1/corpus_lm/tiny/step-20/mlp_input/{name}.csv"
                 for name in ("memory", "memory_tokens", "memory_grid", "memory_findings", "frontier"))]
FIGURES = ["figure1/tiny/figure1.png", "figure2/figure2.pdf", "figure3/figure3.png", "findings_by_scale.png",
           "table1/corpus_lm/tiny/step-20/mlp_input/projection_traces.png", "table1/corpus_lm/tiny/step-20/mlp_input/grid.png",
           "table1/corpus_lm/tiny/step-20/mlp_input/gain_by_frequency.png", "perplexity_by_key.png",
           "table1/corpus_lm/tiny/step-20/mlp_input/frontier.png"]


def test_gain_by_frequency_agrees_with_the_search_results(tiny_runs):
    """The per-token gains are the Table 1 interpolation's minus the LM's; the bucket shares
    add up to one; the finding is in findings.csv with the rare-minus-frequent difference."""
    results = tiny_runs[0]
    point = results / "table1/corpus_lm/tiny/step-20/mlp_input"
    tokens = pd.read_csv(point / "gain_tokens.csv")
    found = knnlm.SearchResults.load(results / "knn/corpus_lm/tiny/step-20/mlp_input/test.npz")
    config = yaml.safe_load((ROOT / ".tests/config.yaml").read_text())
    lam, temperature = config.get("knn", {}).get("lambda", 0.25), config.get("knn", {}).get("temperature", 1.0)
    np.testing.assert_allclose(tokens.gain, knnlm.knnlm_logprob(found, lam, temperature) - found.lm_logprob, atol=1e-9)
    buckets = pd.read_csv(point / "gain_by_frequency.csv")
    assert buckets.tokens.sum() == len(tokens) and buckets.share.sum() == pytest.approx(1.0)
    row = pd.read_csv(results / "findings.csv").set_index("finding").loc["knn_gain_concentrated_in_rare_tokens"]
    rare = tokens.gain[(tokens.train_count >= 1) & (tokens.train_count < 100)].mean()
    frequent = tokens.gain[tokens.train_count >= 1000].mean()
    assert row.measured == pytest.approx(rare - frequent, rel=1e-9)


def test_neighbours_page_agrees_with_the_datastore_and_the_gains(tiny_runs):
    """Every listed neighbour is a datastore entry whose value is its next token and whose
    stored position holds that token in the training split; each position's gain is the
    one knn_gains wrote for it."""
    from knnlm_limits import tokenizer
    from knnlm_limits.tokens import load_stream

    results = tiny_runs[0]
    point = results / "table1/corpus_lm/tiny/step-20/mlp_input"
    table = pd.read_csv(point / "neighbours.csv", keep_default_na=False)
    assert (point / "neighbours.html").read_text().count("<h3>") == table["rank"].nunique() > 0
    train = load_stream(results / "data/tokens/corpus_train.npz")
    tok = tokenizer.load(results / "data/tokenizer")
    listed = table[table.neighbour > 0]
    assert len(listed) > 0
    for row in listed.itertuples():
        assert row.next_token == tok.decode([int(train[row.train_position])])
    gains = pd.read_csv(point / "gain_tokens.csv").set_index("position").gain
    per_position = table.groupby("position").gain.first()
    np.testing.assert_allclose(per_position, gains.loc[per_position.index], rtol=1e-6, atol=1e-9)


def test_tiny_dag_produces_every_result(tiny_runs):
    results = tiny_runs[0]
    for rel in RESULT_CSVS + FIGURES + ["table1/corpus_lm/tiny/step-20/mlp_input/table1.md", "findings.md"]:
        assert (results / rel).stat().st_size > 0, rel
    table = pd.read_csv(results / "table1/corpus_lm/tiny/step-20/mlp_input/table1.csv")
    for col in ("ppl_lm", "ppl_knnlm", "ppl_proj_f", "ppl_proj_fg", "ppl_proj_f_reverse"):
        assert table[col].item() > 1
    fig1 = pd.read_csv(results / "figure1/tiny/children.csv")
    assert set(fig1.variant) == {"full", "no_last_mlp"} and set(fig1.step) == {0, 4, 10}
    assert set(fig1[fig1.variant == "full"].method) == {"lm", "knn", "knnlm"}
    assert set(fig1[fig1.variant == "no_last_mlp"].method) == {"lm"}
    assert {"parent", "child", "n_children", "step", "seed", "variant", "method", "loglik"} <= set(fig1.columns)
    found = pd.read_csv(results / "findings.csv")
    assert set(findings.COLUMNS) == set(found.columns)
    assert {"knnlm_beats_lm", "softmax_bottleneck_ruled_out", "mlp_hurdle_in_projection", "overspecification_gap",
            "knn_helps_overspecification", "no_last_mlp_learns_faster_early", "knn_high_from_random_encoder",
            "scaling_does_not_fix_overspecification"} <= set(found.finding)
    # a kNN-LM claim names its key; an LM-only one none
    knn_rows = found.finding.isin(["knnlm_beats_lm", "knn_helps_overspecification", "knn_high_from_random_encoder"])
    assert (found[knn_rows].key == "mlp_input").all()
    assert found[found.finding.isin(["overspecification_gap", "no_last_mlp_learns_faster_early"])].key.isna().all()
    assert (results / "logs/train/corpus_lm/tiny/step-20.log").read_text().strip()  # every log goes to its file


def test_two_runs_write_identical_csvs(tiny_runs):
    a, b = tiny_runs
    for rel in RESULT_CSVS:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_nothing_to_do_after_a_complete_run(tiny_runs):
    proc = snakemake("-n", "--configfile", ".tests/config.yaml", "--config", f"results={tiny_runs[0]}")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_table1_findings_recomputed_from_the_stage_inputs(tiny_runs):
    """The projection gaps, from the per-token CSV by hand; each CI holds its point estimate."""
    point = tiny_runs[0] / "table1/corpus_lm/tiny/step-20/mlp_input"
    tokens = pd.read_csv(point / "projection_tokens.csv")
    ppl = {c: float(np.exp(-tokens[c].mean())) for c in ("lm", "knnlm", "proj_f", "proj_fg")}
    found = pd.read_csv(tiny_runs[0] / "findings.csv").set_index("finding")
    for finding, column in (("softmax_bottleneck_ruled_out", "proj_f"), ("mlp_hurdle_in_projection", "proj_fg")):
        gap = (ppl[column] - ppl["knnlm"]) / (ppl["lm"] - ppl["knnlm"])
        row = found.loc[finding]
        assert row.measured == pytest.approx(gap, rel=1e-9)
        assert row.ci_low <= row.measured <= row.ci_high
        assert row.holds == (row.ci_high < 0.5 if column == "proj_f" else row.ci_low > 0.5)
    knn = knnlm.SearchResults.load(tiny_runs[0] / "knn/corpus_lm/tiny/step-20/mlp_input/test.npz")
    diff = knnlm.perplexity(knn.lm_logprob) - knnlm.perplexity(knnlm.knnlm_logprob(knn, 0.25, 1.0))
    assert found.loc["knnlm_beats_lm"].measured == pytest.approx(diff, rel=1e-9)


# ---------------------------------------------------------------- keys

TINY = yaml.safe_load((ROOT / ".tests/config.yaml").read_text())


def test_memory_numbers_recomputed_from_the_stage_csvs(tiny_runs):
    """Every perplexity of the memory table from its per-token CSV, each tuned lambda_m from its
    validation grid, the findings from the per-token columns, the frontier from the table."""
    point = tiny_runs[0] / "table1/corpus_lm/tiny/step-20/mlp_input"
    tokens, table = pd.read_csv(point / "memory_tokens.csv"), pd.read_csv(point / "memory.csv")
    grid, frontier = pd.read_csv(point / "memory_grid.csv"), pd.read_csv(point / "frontier.csv")
    ppl = lambda col: float(np.exp(-tokens[col].mean()))  # noqa: E731
    main = "x4-imitation"
    row = table.set_index("component").loc[f"LM + memory {main}"]
    assert row.test_ppl_tuned == pytest.approx(ppl(f"lm_memory_{main}"), rel=1e-9)
    own = grid[grid.component == f"memory {main}"]
    assert row["lambda"] == own.sort_values(["valid_perplexity", "lambda"]).iloc[0]["lambda"]
    lam = row["lambda"]
    np.testing.assert_allclose(tokens[f"lm_memory_{main}"],
                               np.log(lam * np.exp(tokens[f"memory_{main}"]) + (1 - lam) * np.exp(tokens.lm)), rtol=1e-9)
    assert table.set_index("component").loc["LM"].test_ppl_tuned == pytest.approx(ppl("lm"), rel=1e-9)
    found = pd.read_csv(point / "memory_findings.csv")
    recovered = found[(found.finding == "memory_recovers_knn_gain") & (found.setting == "tuned")].iloc[0]
    by_hand = (ppl("lm") - ppl(f"lm_memory_{main}")) / (ppl("lm") - ppl("knnlm_tuned"))
    assert recovered.measured == pytest.approx(by_hand, rel=1e-9)
    more = found.set_index("finding").loc["memory_beats_more_training"]
    assert more.measured == pytest.approx(ppl("lm_more") - ppl(f"lm_memory_{main}"), rel=1e-9)
    # the control, planned from the config, spends the imitating memory's training and kNN-target
    # search as its job counted them, to within its last step
    control = table.set_index("kind").loc["more_training"]
    spent = row.train_flops + row.target_search_flops
    assert row.target_search_flops > 0 and spent <= control.train_flops < spent + control.train_flops / control.extra_steps
    assert table.set_index("component").loc["LM + memory x4-values"].target_search_flops == 0
    shown = frontier.set_index("component")
    assert shown.loc[f"LM + memory {main}"].test_ppl == pytest.approx(ppl(f"lm_memory_{main}"), rel=1e-9)
    assert shown.loc[f"LM + memory {main}"].bytes == row.bytes
    assert set(pd.read_csv(tiny_runs[0] / "findings.csv").finding) >= {
        "memory_recovers_knn_gain", "memory_beats_more_training", "memory_alone_beats_lm", "memory_imitation_helps",
        "memory_smaller_than_datastore", "memory_helps_overspecification"}


def test_two_keys_give_two_table1_rows_and_mlp_input_is_unchanged(tiny_runs, tmp_path):
    """A fresh run of Table 1 with knn.keys [mlp_input, final_hidden]: one Table 1 per key,
    the mlp_input one byte for byte the one-key run's."""
    results = tmp_path / "results"
    config = {**TINY, "results": str(results), "knn": {**TINY.get("knn", {}), "keys": ["mlp_input", "final_hidden"]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake("all_table1", "--cores", "2", "--configfile", str(path))
    point = "table1/corpus_lm/tiny/step-20"
    assert (results / point / "mlp_input/table1.csv").read_bytes() == (tiny_runs[0] / point / "mlp_input/table1.csv").read_bytes()
    other = pd.read_csv(results / point / "final_hidden/table1.csv")
    assert other.key.tolist() == ["final_hidden"]
    assert other.test_ppl_lm.item() == pd.read_csv(results / point / "mlp_input/table1.csv").test_ppl_lm.item()


# ---------------------------------------------------------------- paper scale, rehearsed


@pytest.fixture(scope="session")
def rehearsal(tmp_path_factory):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "knnlm_limits.rehearsal", "rehearsal"], cwd=ROOT, check=True,
                   env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    results = tmp_path_factory.mktemp("rehearsal") / "results"
    snakemake("--cores", "2", "--configfile", "config/rehearsal.yaml", "--config", f"results={results}")
    return results


def test_rehearsal_runs_every_paper_scale_path(rehearsal):
    points = ["corpus_lm/gpt2-2x64/step-20/mlp_input", "pretrained/rehearsal--gpt2-lm/step-0/mlp_input",
              "pretrained/rehearsal--llama-lm/step-0/mlp_input"]
    for point in points:
        table = pd.read_csv(rehearsal / "table1" / point / "table1.csv")
        assert table.setting.item() == "tuned"
        # one trained index, a copy of it a shard
        assert json.loads((rehearsal / "indexes" / point / "trained/index.json").read_text())["kind"] == "IVF32,PQ8"
        shard_keys = [json.loads((rehearsal / "indexes" / point / f"3-shards/shard-{s}/index.json").read_text())["keys"]
                      for s in range(3)]
        assert sum(shard_keys) == table.datastore_size.item() and min(shard_keys) > 0
    assert pd.read_csv(rehearsal / "table1" / points[2] / "table1.csv").architecture.item() == "llama"
    for shape in ("gpt2-2x32", "llama-2x32"):
        rows = pd.read_csv(rehearsal / "figure1" / shape / "children.csv")
        assert set(rows[rows.method == "knnlm"].variant) == {"full", "no_last_mlp"} and set(rows.seed) == {0, 1}
    assert "in the model's chat template" in (rehearsal / "logs/chat_tokens.log").read_text()
    chat = json.loads((rehearsal / "models/chat/step-10/config.json").read_text())
    assert chat["model_type"] == "qwen2" and chat["dtype"] == "float32"  # fine-tuned in float32 from bf16
    assert "resuming" not in (rehearsal / "logs/train/corpus_lm/gpt2-2x64/step-20.log").read_text()
    # every point's search is approximate: its sampled queries were searched exactly too
    found = pd.read_csv(rehearsal / "findings.csv")
    fidelity = found[found.finding == "approximate_search_lowers_perplexity"]
    assert len(fidelity) == len(points) and fidelity.note.str.startswith("recall@k").all()
    for point in points:
        table = pd.read_csv(rehearsal / "table1" / point / "fidelity.csv")
        assert len(table) > 0 and table.recall_at_k.between(0, 1).all()
    # the memory at every point: kNN targets through the approximate index, a GPT-2 and a Llama
    # key, a second size, the frontier's IVF-PQ datastore; the control only where the LM was trained here
    for point in points:
        for shard in range(3):  # the targets' search through each shard's index
            assert "(IVF32,PQ8)" in (rehearsal / "logs/memory" / point / f"kl_shard-{shard}.log").read_text()
        memory = pd.read_csv(rehearsal / "table1" / point / "memory.csv")
        assert {"LM + memory x4-imitation", "LM + memory x4-values", "LM + memory x1-imitation",
                "kNN-LM, PQ8 codes"} <= set(memory.component)
        assert (memory.kind == "more_training").any() == point.startswith("corpus_lm/")
    assert "resuming" not in (rehearsal / "logs/memory" / points[2] / "x4-imitation.log").read_text()
    fig2 = pd.read_csv(rehearsal / "figure2/children.csv")
    assert set(fig2[fig2.method == "lm_memory"].step) == set(fig2.step)  # memory.figure2: all


def test_figure1_finding_recomputed_from_the_stage_inputs(rehearsal):
    rows = pd.read_csv(rehearsal / "figure1/gpt2-2x32/children.csv")
    lm = rows[(rows.method == "lm") & (rows.step == 4)]  # the early checkpoint: 0 < 4 <= 0.4 x 10
    per_seed = lm.groupby(["seed", "variant"]).loglik.mean().unstack()
    diff = per_seed["no_last_mlp"] - per_seed["full"]
    found = pd.read_csv(rehearsal / "findings.csv")
    row = found[(found.finding == "no_last_mlp_learns_faster_early") & (found.model == "memorization/gpt2-2x32")].iloc[0]
    assert row.measured == pytest.approx(diff.mean(), rel=1e-9)
    assert row.ci_low <= row.measured <= row.ci_high
    half = 12.706 * diff.std(ddof=1) / np.sqrt(2)  # t interval over 2 seeds
    assert row.ci_high - row.measured == pytest.approx(half, rel=1e-6)


# ---------------------------------------------------------------- real text


def test_real_text_tiny_run(tmp_path):
    if not (SHARED_WIKITEXT / "valid.txt").is_file():
        pytest.skip(f"real-text check: WikiText-2 not found at {SHARED_WIKITEXT}")
    results = tmp_path / "results"
    snakemake("--cores", "2", "--configfile", ".tests/config.yaml", ".tests/wikitext2.yaml",
              "--config", f"results={results}")
    table = pd.read_csv(results / "table1/corpus_lm/tiny/step-20/mlp_input/table1.csv")
    assert table.ppl_knnlm.item() < table.ppl_lm.item()
    assert "Homarus" in (results / "data/corpus/train.txt").read_text()
