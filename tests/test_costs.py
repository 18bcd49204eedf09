"""The cost model and the plan: sizes against real objects, requests against their rules."""

import json
import pandas as pd
import pytest
import torch  # noqa: F401  (transformers' model classes below)
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

from knnlm_limits import costs, plan
from knnlm_limits.config import validate


def _parameters(model) -> int:
    """What the model holds: model.parameters() lists a tied head's matrix once."""
    return sum(p.numel() for p in model.parameters())


GQA = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=176, num_attention_heads=8, num_key_value_heads=2,
           vocab_size=900)
MODEL_CONFIGS = {  # tiny configs of each supported family: random weights, nothing from the hub
    "gpt2 (tied)": (GPT2Config, GPT2LMHeadModel, dict(n_layer=3, n_embd=96, n_head=4, vocab_size=1000, n_positions=64)),
    "gpt2 (untied, n_inner)": (GPT2Config, GPT2LMHeadModel, dict(n_layer=2, n_embd=48, n_head=4, n_inner=80,
                                                                  vocab_size=700, n_positions=32,
                                                                  tie_word_embeddings=False)),
    "llama (grouped-query, untied)": (LlamaConfig, LlamaForCausalLM, dict(GQA, tie_word_embeddings=False)),
    "llama (biases, head_dim)": (LlamaConfig, LlamaForCausalLM, dict(GQA, head_dim=16, attention_bias=True,
                                                                     mlp_bias=True, tie_word_embeddings=True)),
    "qwen2 (grouped-query, tied)": (Qwen2Config, Qwen2ForCausalLM, dict(GQA, tie_word_embeddings=True)),
    "qwen2 (grouped-query, untied)": (Qwen2Config, Qwen2ForCausalLM, dict(GQA, tie_word_embeddings=False)),
    "mistral (grouped-query, head_dim)": (MistralConfig, MistralForCausalLM, dict(GQA, num_key_value_heads=4,
                                                                                    head_dim=12)),
    # an MLP width other than the gated width of d (176 for d 64)
    "llama (intermediate_size of its own)": (LlamaConfig, LlamaForCausalLM, dict(GQA, intermediate_size=100)),
}


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_size_counts_the_parameters_a_model_has(name):
    """The plan's parameter count of a config.json is exactly the instantiated model's, for
    each family, tied and untied, with grouped-query attention (8 query heads, 2 key/value
    heads: counting them as full attention is 5.9% too many on the Llama config), a head_dim
    other than d / heads, and biases where the family has them. Exact: any term left out
    (the attention output projection, a norm, a bias) is off by at least d."""
    config_cls, model_cls, kwargs = MODEL_CONFIGS[name]
    cfg = config_cls(**kwargs)
    spec = json.loads(cfg.to_json_string())  # what a config.json holds
    assert costs.model_size(spec)["params"] == _parameters(model_cls(cfg))


def test_model_size_reads_a_config_json_that_leaves_the_defaults_out():
    """A config.json need not spell out what its model type defaults to: a Llama one without
    tie_word_embeddings is untied (LlamaConfig's default); one with neither model_type nor
    architecture is a GPT-2 if it uses GPT-2's names, else a tied Llama-family model (as a shape
    is built). The width, depth and vocabulary come back as given."""
    llama = dict(GQA, model_type="llama")
    assert costs.model_size(llama)["params"] == _parameters(LlamaForCausalLM(LlamaConfig(**GQA)))
    gpt2 = dict(n_layer=3, n_embd=96, n_head=4, vocab_size=1000, n_positions=64)
    size = costs.model_size(gpt2)
    assert size["params"] == _parameters(GPT2LMHeadModel(GPT2Config(**gpt2)))
    assert (size["d"], size["layers"], size["vocab"]) == (96, 3, 1000)
    size = costs.model_size(llama)
    assert (size["d"], size["layers"], size["vocab"]) == (64, 2, 900)
    # Llama's names and no model_type: sized as a shape of that family is built (tied)
    assert costs.model_size(GQA)["params"] == _parameters(LlamaForCausalLM(LlamaConfig(**GQA,
                                                                                      tie_word_embeddings=True)))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "qwen2"])
@pytest.mark.parametrize("drop_last_mlp", [False, True])
def test_model_size_of_a_shape_and_of_a_saved_model(arch, drop_last_mlp, tmp_path):
    """A corpus_lm / memorization shape is sized as model.build_model makes it (tied, the
    gated width of model.mlp_width), less GPT-2's position table, whose length the shape does
    not give; the config.json of the built model, saved without its last MLP or not, exactly."""
    from knnlm_limits import model

    shape = {"name": "s", "architecture": arch, "n_layer": 3, "n_embd": 40, "n_head": 4}
    lm = model.build_model(500, 3, 40, 4, 24, architecture=arch, drop_last_mlp=drop_last_mlp)
    positions = 24 * 40 if arch == "gpt2" else 0
    if not drop_last_mlp:
        assert costs.model_size({**shape, "vocab_size": 500})["params"] == _parameters(lm) - positions
    lm.save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["model_type"].endswith("_no_last_mlp") == drop_last_mlp
    assert costs.model_size(spec)["params"] == _parameters(lm)


def test_estimates_grow_with_the_data_and_not_otherwise():
    """4x the training tokens: 4x the datastore's disk, its memory by exactly the measured
    per-token cost; the evaluation jobs do not change. In N shards, a shard's job costs its
    share (give or take a batch of windows)."""
    small, big = (plan.merged_config([], [f"corpus={{max_train_tokens: {n}}}", "knn={shards: 1}"])
                  for n in (100_000, 400_000))
    w = {"model": "corpus_lm/4x128", "step": "150", "shard": "0"}
    a, b = (costs.estimate("datastore", c, w) for c in (small, big))
    assert b.disk_mb == pytest.approx(4 * a.disk_mb)
    per_token = costs.table()["measured"]["datastore_bytes_per_token"]
    assert (b.mem_mb - a.mem_mb) * 1e6 == pytest.approx(300_000 * per_token)
    assert costs.estimate("knnlm_grid", small, w).mem_mb == costs.estimate("knnlm_grid", big, w).mem_mb
    in_four = plan.merged_config([], ["corpus={max_train_tokens: 400000}", "knn={shards: 4, batch_tokens: 1000}"])
    shard = costs.estimate("datastore", in_four, w)
    assert shard.disk_mb == pytest.approx(b.disk_mb * (100_000 + 1000) / 400_000)


def test_unknown_sizes_request_the_caps():
    config = validate({"corpus": {"eval_tokens": {"valid": 4096, "test": None}}})
    est = costs.estimate("corpus_tokens", config, {"split": "test"})
    assert not est.known
    assert costs.request(est, config["resources"]["small"]) == {"mem_mb": 4000, "runtime": 60}
    assert costs.split_tokens(validate({"corpus": {"max_train_tokens": None, "expected_tokens": {"train": 7}}}),
                              "train") == 7


def test_requests_rise_with_the_attempt_between_floor_and_cap():
    caps = {"mem_mb": 10_000, "runtime": 100, "min_mem_mb": 1000, "min_runtime": 5}
    est = costs.Estimate(mem_mb=2000, minutes=20)
    first, second, fifth = (costs.request(est, caps, attempt) for attempt in (1, 2, 5))
    assert first == {"mem_mb": 2000 * costs.MEM_MARGIN, "runtime": 20 * costs.TIME_MARGIN}
    assert second["mem_mb"] == 2 * first["mem_mb"] and second["runtime"] == 2 * first["runtime"]
    assert fifth == {"mem_mb": 10_000, "runtime": 100}
    assert costs.request(costs.Estimate(mem_mb=1, minutes=0.1), caps) == {"mem_mb": 1000, "runtime": 5}


def test_partition_has_the_gpu_memory_and_the_time():
    config = validate({"cluster": {"partitions": [
        {"name": "cpu", "max_runtime": 600}, {"name": "cpu-long", "max_runtime": 4000},
        {"name": "gpu40", "gpu_mem_mb": 40_000}, {"name": "gpu80", "gpu_mem_mb": 80_000}]}})
    assert costs.partition(config, costs.Estimate(1, 1), 60) == "cpu"
    assert costs.partition(config, costs.Estimate(1, 1), 1000) == "cpu-long"
    assert costs.partition(config, costs.Estimate(1, 1, gpu_mem_mb=30_000, uses_gpu=True), 60) == "gpu40"
    assert costs.partition(config, costs.Estimate(1, 1, gpu_mem_mb=60_000, uses_gpu=True), 60) == "gpu80"
    # nothing big enough: the biggest (and the plan flags it)
    assert costs.partition(config, costs.Estimate(1, 1, gpu_mem_mb=90_000, uses_gpu=True), 60) == "gpu80"


@pytest.mark.parametrize("configs", [["config/paper.yaml"], ["config/paper.yaml", "config/paper-sweep.yaml"]])
def test_paper_plan_fits_its_requests_and_partitions(configs, capsys, tmp_path):
    """make plan on the paper configs: every estimate within its request, every request
    within 48 h and within the GPU memory of its partition, GPUs only where a job uses one."""
    assert plan.main(["--configfile", *configs, "--csv", str(tmp_path / "plan.csv")]) == 0
    assert "no job flagged" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "plan.csv")
    assert (rows.est_mem_mb <= rows.req_mem_mb).all() and (rows.est_minutes <= rows.req_minutes).all()
    assert rows.req_minutes.max() <= 48 * 60 and rows["flags"].isna().all()
    by_rule = rows.groupby("rule")
    searches = by_rule.get_group("knn_shard_search")
    assert set(searches.partition) == {"cpu"} and (searches.gpus == 0).all()
    for rule in ("train_corpus_lm", "train_chat", "datastore"):
        assert set(by_rule.get_group(rule).partition) == {"gpu"}


@pytest.mark.parametrize("config", ["config/pretrained.yaml", "config/plan-1b.yaml"])
def test_each_pretrained_plan_fits_its_requests_and_partitions(config, capsys, tmp_path):
    """The cluster configs on a pretrained model plan without a flag too (pretrained.yaml's
    exact search took 2.7 h a shard at 2 shards, over its 2 h cap, until it took 4 shards)."""
    assert plan.main(["--configfile", config, "--csv", str(tmp_path / "plan.csv")]) == 0
    assert "no job flagged" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "plan.csv")
    assert (rows.est_mem_mb <= rows.req_mem_mb).all() and (rows.est_minutes <= rows.req_minutes).all()
    assert rows["flags"].isna().all() and (rows[rows.rule == "knn_shard_search"].gpus == 0).all()


def test_exact_search_plan_has_no_reranking_whatever_knn_rerank_says(capsys, tmp_path):
    """pretrained.yaml searches exactly: knn.rerank on changes none of its searches' estimates
    (an exact search re-ranks nothing and writes no exact distances: index.reranks)."""
    plans = {}
    for rerank in ("false", "true"):
        csv = tmp_path / f"plan-{rerank}.csv"
        assert plan.main(["--configfile", "config/pretrained.yaml", "--config", f"knn={{rerank: {rerank}}}",
                          "--csv", str(csv)]) == 0
        rows = pd.read_csv(csv)
        plans[rerank] = rows[rows.rule.isin(["knn_shard_search", "memory_target_shard"])].set_index(
            ["rule", "wildcards"])[["est_mem_mb", "est_disk_mb", "est_minutes"]]
    capsys.readouterr()
    assert len(plans["true"]) == 8
    pd.testing.assert_frame_equal(plans["true"], plans["false"])


def test_plan_flags_a_request_below_its_estimate_and_a_group_over_its_partition(capsys):
    code = plan.main(["--configfile", "config/paper.yaml", "--config",
                      "resources={train: {mem_mb: 1000, runtime: 2880, gpus: 1, threads: 8}}",
                      "cluster={partitions: [{name: cpu, max_runtime: 2880}, {name: gpu, max_runtime: 15, gpu_mem_mb: 81920}]}"])
    out = capsys.readouterr().out
    assert code == 1
    flagged = [line for line in out.splitlines() if line.startswith("train_corpus_lm")][0]
    assert "mem>req" in flagged and "time>partition" in flagged


def test_a_group_is_flagged_when_its_jobs_add_up_past_the_partition():
    config = validate({"cluster": {"partitions": [{"name": "gpu", "max_runtime": 100, "gpu_mem_mb": 1}]}})
    res = {"slurm_partition": "gpu", "runtime": "60", "mem_mb": "10"}
    est = {"known": True, "mem_mb": 1, "minutes": 1, "gpu_mem_mb": 0, "disk_mb": 0}
    jobs = [plan.Job("train", "seed=0", 1, res, "run", estimate=est), plan.Job("eval", "seed=0", 1, res, "run", estimate=est),
            plan.Job("train", "seed=1", 1, res, None, estimate=est)]
    plan.check(jobs, config)
    assert [j.flags for j in jobs] == [["group>partition"], ["group>partition"], []]


def test_parse_dry_run_reads_groups_threads_and_resources():
    text = """
[Wed Dec  2 13:32:52 2026]
rule corpus:
    output: a.txt
    benchmark: r/benchmarks/corpus.tsv
    resources: tmpdir=/tmp, runtime=17, slurm_partition=cpu, mem_mb=8000
[Wed Dec  2 13:32:52 2026] Group job run (jobs in lexicogr. order):

    [Wed Dec  2 13:32:52 2026]
    rule train:
        wildcards: seed=0
        threads: 8
        resources: tmpdir=/tmp, runtime=5, gpu=1, mem_mb=3495
[Wed Dec  2 13:32:52 2026]
rule all:
    input: a.txt
"""
    jobs = plan.parse_dry_run(text)
    assert [(j.rule, j.group, j.threads, j.wildcards) for j in jobs] == [("corpus", None, 1, ""), ("train", "run", 8, "seed=0")]
    assert jobs[0].r("mem_mb") == 8000 and jobs[1].r("gpu") == 1 and jobs[0].r("slurm_partition") == "cpu"
    assert jobs[0].benchmark == "r/benchmarks/corpus.tsv" and jobs[1].key == ("train", (("seed", "0"),))


def _job_with_benchmark(tmp_path, rss_mib: float, seconds: float) -> plan.Job:
    bench = tmp_path / "job.tsv"
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     f"{seconds}\t0:00:01\t{rss_mib}\t0\t0\t0\t0\t0\t0\t0\n")
    return plan.Job("knn_search", "key=k", 1, {"mem_mb": "1000", "runtime": "5"}, None, benchmark=str(bench))


def test_measured_flags_a_job_that_used_more_than_its_request(tmp_path):
    """Snakemake's max_rss is MiB, requests are MB: 953 MiB fits 1000 MB, 955 MiB does not."""
    assert plan.measured([_job_with_benchmark(tmp_path, 953, 299)])[0]["flags"] == ""
    assert plan.measured([_job_with_benchmark(tmp_path, 955, 10)])[0]["flags"] == "rss>req"
    assert plan.measured([_job_with_benchmark(tmp_path, 100, 301)])[0]["flags"] == "time>req"


TINY_WITHOUT_FLOORS = "resources={" + ", ".join(
    f"{kind}: {{min_mem_mb: 1, min_runtime: 1}}" for kind in ("small", "train", "embed", "index")) + "}"


@pytest.mark.workflow
def test_every_tiny_job_used_no_more_than_its_request(tiny_runs):
    """Every job of the tiny DAG against its benchmark file: peak RSS and wall time within the
    request the cost model makes for it, the floors taken away (at this size every request
    would otherwise sit on its floor and say nothing of the model)."""
    jobs = plan.planned_jobs([".tests/config.yaml"], [f"results={tiny_runs[0]}", TINY_WITHOUT_FLOORS])
    rows = plan.measured(jobs)
    assert len(rows) == len(jobs)  # every job of the run has its benchmark file
    over = [(r["rule"], r["wildcards"], r["rss_mb"], r["req_mem_mb"], r["minutes"], r["req_minutes"])
            for r in rows if r["flags"]]
    assert not over
