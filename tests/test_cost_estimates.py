"""The cost model's formulas one by one, against closed forms derived here from their
docstrings on tiny synthetic inputs, and the plan's plumbing (record, partition, the model a
job sizes). The per-unit costs are the table's, except that its fitted zeros are made
non-zero: a term multiplied by 0 cannot be seen.

REL is float rounding only: every figure here is a sum of a few products, so another CPU's
rounding moves it by ~1e-15; a changed coefficient or a dropped term moves it by far more
than 1e-9 (the inputs are chosen so that each term is at least 1e-6 of its figure)."""

import copy
import json

import numpy as np
import pytest

from knnlm_limits import costs, memory
from knnlm_limits.config import folder_name
from knnlm_limits.costs import base, children, index as index_costs, knnlm as knnlm_costs, train as train_costs
from knnlm_limits.costs import memory as memory_costs
from knnlm_limits.costs.base import MB, Job

REL = 1e-9
# a model's size with every field distinct, so that a field read in place of another shows
SIZE = {"params": 1_000_003.0, "d": 48, "layers": 3, "vocab": 701}


@pytest.fixture
def unit(monkeypatch):
    """The per-unit costs (costs.yaml's, with its zeros made non-zero), patched in."""
    table = copy.deepcopy(base.table())
    table["measured"].update(datastore_bytes_per_token=3.0, search_bytes_per_position=5.0,
                             approximate_search_bytes_per_neighbour=7.0)
    monkeypatch.setattr(base, "table", lambda path=None: table)
    return {**table["measured"], **table["measured_gpu"], **table["assumed"]}


def _job(config=None, threads=1, uses_gpu=False, wildcards=None, base_dir=None, rule="r"):
    return Job(rule, config or {}, wildcards or {}, threads, uses_gpu, base_dir)


# ---------------------------------------------------------------- shared per-unit formulas


def test_seconds_divide_the_flops_by_the_device_and_precision_rate(unit):
    flops = 3.7e12
    assert base.seconds(flops, False, 3) == pytest.approx(flops / (3 * unit["cpu_flops_per_thread"]), rel=REL)
    # no threads still runs on one
    assert base.seconds(flops, False, 0) == pytest.approx(flops / unit["cpu_flops_per_thread"], rel=REL)
    assert base.seconds(flops, False, 1) == pytest.approx(flops / unit["cpu_flops_per_thread"], rel=REL)
    # a GPU: training's bf16 rate unless asked for a float32 pass; threads do not matter
    assert base.seconds(flops, True, 5) == pytest.approx(flops / unit["gpu_flops"], rel=REL)
    assert base.seconds(flops, True, 5, float32=True) == pytest.approx(flops / unit["gpu_fp32_forward_flops"],
                                                                        rel=REL)


def test_a_forward_pass_is_two_flops_a_parameter_a_token_in_float32(unit):
    tokens = 12_345
    flops = 2 * SIZE["params"] * tokens
    assert base.forward_seconds(SIZE, tokens, False, 4) == pytest.approx(
        flops / (4 * unit["cpu_flops_per_thread"]), rel=REL)
    assert base.forward_seconds(SIZE, tokens, True, 4) == pytest.approx(flops / unit["gpu_fp32_forward_flops"],
                                                                         rel=REL)


def test_gpu_resident_is_float32_weights_and_one_batch_of_activations(unit):
    assert base.gpu_resident(SIZE, 512, False) == 0.0
    weights = np.zeros(int(SIZE["params"]), np.float32).nbytes
    activations = 512 * SIZE["d"] * unit["activation_bytes_per_token_layer_dim"]
    assert base.gpu_resident(SIZE, 512, True) == pytest.approx((weights + activations) / MB, rel=REL)


@pytest.mark.parametrize("kind", ["exact", "pq"])
def test_search_threads_count_whole_up_to_the_two_fitted(unit, kind):
    efficiency = unit[f"{kind}_search_thread_efficiency"]
    assert [base.search_threads(t, kind) for t in (0, 1, 2)] == [1, 1, 2]
    assert base.search_threads(3, kind) == pytest.approx(3 * efficiency, rel=REL)
    assert base.search_threads(16, kind) == pytest.approx(16 * efficiency, rel=REL)


def test_lm_pass_holds_a_batch_of_float32_logits_the_measured_times(unit):
    config = {"knn": {"batch_tokens": 96}}
    logits = np.zeros((96, SIZE["vocab"]), np.float32).nbytes
    assert base.lm_pass_mb(config, SIZE) == pytest.approx(logits * unit["lm_pass_logit_copies"] / MB, rel=REL)


def test_a_position_holds_k_float32_distances_and_int32_values():
    k = 37
    per_position = np.zeros(k, np.float32).nbytes + np.zeros(k, np.int32).nbytes
    assert base.positions_bytes({"knn": {"k": k}}) == per_position


@pytest.mark.parametrize("block, stride", [(8, 2), (12, 3), (8, None)])
def test_window_factor_counts_the_windows_a_token_is_run_in(block, stride):
    step = stride or block
    starts = range(0, 100, step)
    middle = 50  # far from either end of the stream
    windows = sum(s <= middle < s + block for s in starts)
    assert base.window_factor({"corpus": {"block_size": block, "stride": stride}}) == windows


def test_a_rule_no_stage_prices_is_a_small_job(unit):
    est = costs.estimate("no_such_rule", {}, {})
    assert (est.mem_mb, est.minutes) == (unit["light_process_mb"] + unit["small_job_mb"], unit["small_job_minutes"])


def test_an_unknown_estimate_keeps_whether_the_job_holds_a_gpu():
    assert base.unknown("why").uses_gpu is False
    est = base.unknown("why", uses_gpu=True)
    assert est.uses_gpu is True and not est.known and est.notes == ["why"]


def test_cost_registers_the_function_for_each_rule():
    def fn(job):
        return None
    try:
        assert base.cost("rule_a", "rule_b")(fn) is fn
        assert base.ESTIMATORS["rule_a"] is fn and base.ESTIMATORS["rule_b"] is fn
    finally:
        base.ESTIMATORS.pop("rule_a", None)
        base.ESTIMATORS.pop("rule_b", None)


def test_shards_hold_every_key():
    """The largest shard's entries: the ceiling of an even share (plus a batch); the shards
    together hold every key."""
    for n_keys, shards in [(10, 3), (1001, 4), (12, 4)]:
        job = _job({"knn": {"shards": shards, "batch_tokens": 0}})
        largest = job.shard_keys(n_keys)
        assert isinstance(largest, int) and largest * shards >= n_keys > (largest - 1) * shards
    job = _job({"knn": {"shards": 4, "batch_tokens": 5}})
    assert job.shard_keys(1001) == 251 + 5 and job.shard_keys(None) is None


# ---------------------------------------------------------------- the model a job sizes

GPT2_SMALL = {"params": 124_439_808, "d": 768, "layers": 12, "vocab": 50_257}  # GPT-2 small, tied
TINY_LM = {"model_type": "gpt2", "n_layer": 2, "n_embd": 16, "n_head": 2, "vocab_size": 321, "n_positions": 8}
SHAPES = [{"name": "a", "architecture": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4},
          {"name": "b", "architecture": "llama", "n_layer": 3, "n_embd": 24, "n_head": 2}]


@pytest.fixture
def workdir(tmp_path):
    """A workflow folder with a local tokenizer (vocabulary 321), a local LM and an imported
    model's folder, each named relative to it as the config names them."""
    for folder, spec in [("models/tok", {"vocab_size": 321}), ("models/lm", TINY_LM),
                         ("pretrained/extra", {**TINY_LM, "n_layer": 5})]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text(json.dumps(spec))
    return tmp_path


def _models_config(shapes=SHAPES, pretrained=("models/lm", "gpt2"), tokenizer="models/tok"):
    return {"tokenizer": {"pretrained": tokenizer, "vocab_size": 999},
            "corpus_lm": {"shapes": list(shapes), "pretrained": list(pretrained)}}


def _size_of(spec, vocab=None):
    return base.model_size({**spec, "vocab_size": vocab} if vocab else spec)


def test_the_vocabulary_is_the_pretrained_tokenizers_where_one_is_named(workdir):
    assert base.vocab_size(_models_config(), workdir) == 321  # a folder relative to the workflow
    assert base.vocab_size(_models_config(tokenizer="gpt2")) == 50_257  # a hub id costs.yaml knows
    assert base.vocab_size(_models_config(tokenizer="no/such-model"), workdir) == 999  # else the config's
    assert base.vocab_size(_models_config(tokenizer=None), workdir) == 999


def test_a_known_hub_model_is_its_stated_size():
    size = base.model_size(base.table()["known_models"]["gpt2"])
    assert size == {**GPT2_SMALL, "params": float(GPT2_SMALL["params"])}
    # the stated count is the architecture's own: GPT-2 small's config, counted term by term
    full = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50_257,
            "n_positions": 1024}
    assert base.model_size(full)["params"] == GPT2_SMALL["params"]


def test_named_models_are_sized_from_the_config_folders_and_hub_table(workdir):
    config = _models_config()
    first_shape = _size_of(SHAPES[0], vocab=321)
    assert base.named_model_size(config, "corpus_lm", workdir) == first_shape
    # no shapes: the first pretrained corpus LM, a folder relative to the workflow
    assert base.named_model_size(_models_config(shapes=[]), "corpus_lm", workdir) == _size_of(TINY_LM)
    assert base.named_model_size(config, "gpt2", workdir)["params"] == GPT2_SMALL["params"]
    assert base.named_model_size(config, str(workdir / "models/lm"))["params"] == _size_of(TINY_LM)["params"]
    assert base.named_model_size(config, "no/such-model", workdir) is None
    job = _job(config, base_dir=workdir)
    assert job.named_size("corpus_lm") == first_shape
    assert job.named_size("models/lm") == _size_of(TINY_LM)


@pytest.mark.parametrize("wildcards, expected", [
    ({"model": "corpus_lm/b"}, lambda: _size_of(SHAPES[1], vocab=321)),
    ({"model": f"pretrained/{folder_name('models/lm')}"}, lambda: _size_of(TINY_LM)),
    ({"model": "pretrained/extra"}, lambda: _size_of({**TINY_LM, "n_layer": 5})),  # imported, not listed
    ({"model": f"pretrained/{folder_name('models/lm')}", "source": "gpt2"}, lambda: GPT2_SMALL),
    ({"source": "gpt2"}, lambda: GPT2_SMALL),
])
def test_a_jobs_corpus_lm_is_the_one_its_wildcards_name(workdir, wildcards, expected):
    size = _job(_models_config(), wildcards=wildcards, base_dir=workdir).corpus_model_size()
    assert {key: size[key] for key in GPT2_SMALL} == {key: expected()[key] for key in GPT2_SMALL}


# ---------------------------------------------------------------- training


TRAIN = {"batch_size": 5, "checkpoints": [10, 40]}


def test_training_on_cpu_holds_weights_gradients_moments_and_activations(unit):
    """16 bytes a parameter (float32 weights, gradients, two AdamW moments) and activations per
    token a layer a dimension, all in host memory; 6 FLOPs a parameter a token; up to the last
    checkpoint; each checkpoint's weights and a resumable state (weights and moments)."""
    job = _job(threads=3)
    est = train_costs.training(job, SIZE, TRAIN, tokens_per_example=7)
    tokens_per_step, steps, weights = 5 * 7, 40, 4 * SIZE["params"]
    device = 16 * SIZE["params"] + tokens_per_step * SIZE["layers"] * SIZE["d"] * unit[
        "activation_bytes_per_token_layer_dim"]
    assert est.mem_mb == pytest.approx(unit["process_mb"] + device / MB, rel=REL)
    assert est.gpu_mem_mb == 0.0 and est.uses_gpu is False
    flops = 6 * SIZE["params"] * tokens_per_step * steps
    assert est.minutes * 60 == pytest.approx(flops / (3 * unit["cpu_flops_per_thread"]), rel=REL)
    assert est.disk_mb == pytest.approx((2 * weights + 3 * weights) / MB, rel=REL)


def test_training_on_a_gpu_keeps_the_state_there_and_pays_each_steps_launches(unit):
    job = _job(threads=3, uses_gpu=True)
    est = train_costs.training(job, SIZE, TRAIN, tokens_per_example=7, data_tokens=1000, steps=15, checkpoints=1,
                               keep_optimizer=True)
    tokens_per_step, weights = 35, 4 * SIZE["params"]
    device = 16 * SIZE["params"] + tokens_per_step * SIZE["layers"] * SIZE["d"] * unit[
        "activation_bytes_per_token_layer_dim"]
    # the host holds a copy of the weights and the token stream
    host = unit["process_mb"] + (weights + 1000 * unit["train_bytes_per_data_token"]) / MB
    assert est.mem_mb == pytest.approx(host, rel=REL)
    assert est.gpu_mem_mb == pytest.approx(device / MB, rel=REL) and est.uses_gpu is True
    secs = 6 * SIZE["params"] * tokens_per_step * 15 / unit["gpu_flops"] + 15 * SIZE["layers"] * unit[
        "gpu_seconds_per_step_layer"]
    assert est.minutes * 60 == pytest.approx(secs, rel=REL)
    # one checkpoint with its two moments, and the resumable state
    assert est.disk_mb == pytest.approx((3 * weights + 3 * weights) / MB, rel=REL)


def test_training_an_unknown_model_is_unknown_where_it_would_run():
    est = train_costs.training(_job(uses_gpu=True), None, TRAIN, 7)
    assert not est.known and est.uses_gpu is True


@pytest.mark.parametrize("step, expected", [(50, 50), (100, 50), (200, 100)])
def test_a_checkpoints_job_trains_the_steps_since_the_one_before(step, expected):
    job = _job({"corpus_lm": {"train": {"checkpoints": [50, 100, 200]}}}, wildcards={"step": str(step)})
    assert train_costs.segment(job, "corpus_lm") == (expected, 1)


# ---------------------------------------------------------------- indexes


@pytest.mark.parametrize("kind, code", [("Flat", 4 * 24), ("SQfp16", 2 * 24)])
def test_a_flat_index_is_its_codes(unit, kind, code):
    est = index_costs.build(kind, 5000, 24, 0, 2)
    assert est.disk_mb == pytest.approx(5000 * code / MB, rel=REL)
    assert est.mem_mb == pytest.approx(unit["process_mb"] + 5000 * code / MB, rel=REL)
    assert (est.minutes - 1) * 60 == pytest.approx(5000 * 24 * 1e-9, rel=REL)  # 1 ns a key dimension


def test_training_an_ivf_index_is_k_means_over_its_sample(unit):
    """IVF16,PQ8 over 32-d keys: 16 centroids, 8-byte codes. Trained on min(train_sample, keys)
    keys: 25 k-means iterations of 2 d FLOPs a key a centroid; it holds the sample and writes
    the centroids."""
    d, sample = 32, 300
    est = index_costs.build("IVF16,PQ8", 0, d, 500, 3, sample_of=sample)
    centroids = 16 * d * 4
    assert est.mem_mb == pytest.approx(unit["process_mb"] + (sample * d * 4 + centroids) / MB, rel=REL)
    assert est.disk_mb == pytest.approx(centroids / MB, rel=REL)
    flops = 25 * sample * 16 * d * 2
    assert (est.minutes - 1) * 60 == pytest.approx(flops / (3 * unit["cpu_flops_per_thread"]), rel=REL)


def test_filling_an_ivf_index_stores_a_code_and_an_id_a_key(unit):
    """IVF2,PQ8 filled with 1000 keys: each key's 8-byte code and int64 id in its list; adding
    compares it with each centroid and encodes it against 256 centroids a sub-quantiser."""
    d, n = 32, 1000
    est = index_costs.build("IVF2,PQ8", n, d, 0, 2, sample_of=0)
    stored = n * (8 + 8) + 2 * d * 4
    assert est.disk_mb == pytest.approx(stored / MB, rel=REL)
    assert est.mem_mb == pytest.approx(unit["process_mb"] + stored / MB, rel=REL)
    flops = n * 2 * d * 2 + n * d * 256 * 2
    assert (est.minutes - 1) * 60 == pytest.approx(flops / (2 * unit["cpu_flops_per_thread"]), rel=REL)


def test_a_pq_index_without_lists_stores_no_ids_and_trains_on_its_own_keys(unit):
    d, n = 32, 1000
    est = index_costs.build("PQ8", n, d, 100, 1)
    assert est.disk_mb == pytest.approx((n * 8 + d * 4) / MB, rel=REL)  # one "list": no ids
    assert est.mem_mb == pytest.approx(unit["process_mb"] + (100 * d * 4 + n * 8 + d * 4) / MB, rel=REL)
    flops = 25 * 100 * d * 2 + n * d * 2 + n * d * 256 * 2
    assert (est.minutes - 1) * 60 == pytest.approx(flops / unit["cpu_flops_per_thread"], rel=REL)


# ---------------------------------------------------------------- searches and merges


def test_exact_search_is_a_blas_pass_on_the_search_threads(unit):
    seconds = knnlm_costs.exact_seconds(300, 5000, 24, 16)
    flops = 2 * 300 * 5000 * 24
    assert seconds == pytest.approx(flops / (unit["cpu_flops_per_thread"] * 16 * unit[
        "exact_search_thread_efficiency"]), rel=REL)


def test_an_exact_search_holds_the_answers_and_one_key_block(unit):
    """k neighbours (8 bytes each) and a 4d-byte query for each of the biggest split's
    positions; a block of float32 keys (128 MiB of them, at least k, at most all) and one
    batch's results."""
    from knnlm_limits.index import BLOCK_BYTES

    config, d = {"knn": {"k": 64}}, 24
    for n_keys, k in [(5000, 64), (40, 40)]:  # fewer keys than k: k of them
        held, temporaries, seconds = knnlm_costs.search(config, n_keys, d, 300, 200, "exact", 16)
        assert held == pytest.approx(200 * (8 * k + 4 * d + unit["search_bytes_per_position"]) / MB, rel=REL)
        block = min(n_keys, max(k, BLOCK_BYTES // (4 * d)))
        batch = 200  # a batch is SEARCH_BATCH queries, or fewer where the split has fewer
        assert temporaries == pytest.approx((block * d * 4 + batch * k * unit["exact_search_bytes_per_neighbour"])
                                            / MB, rel=REL)
        assert seconds == pytest.approx(knnlm_costs.exact_seconds(300, n_keys, d, 16), rel=REL)
    _, temporaries, _ = knnlm_costs.search(config, 5000, d, 40_000, 40_000, "exact", 16)
    batch_part = base.SEARCH_BATCH * 64 * unit["exact_search_bytes_per_neighbour"]
    assert temporaries == pytest.approx((5000 * d * 4 + batch_part) / MB, rel=REL)


@pytest.mark.parametrize("kind, nlist, ids", [("IVF2,PQ8", 2, 8), ("PQ8", 1, 0)])
@pytest.mark.parametrize("nprobe", [1, 4])
def test_an_approximate_search_scans_its_probed_lists_codes(unit, kind, nlist, ids, nprobe):
    """The index read whole (each key's 8-byte code and, in lists, its id); nprobe of nlist
    lists scanned (all of them at most), a code byte at a time, on the search threads."""
    config, d, n_keys, queries = {"knn": {"k": 64, "nprobe": nprobe}}, 32, 5000, 300
    held, temporaries, seconds = knnlm_costs.search(config, n_keys, d, queries, 200, kind, 16)
    answers = 200 * (8 * 64 + 4 * d + unit["search_bytes_per_position"])
    assert held == pytest.approx((answers + n_keys * (8 + ids)) / MB, rel=REL)
    assert temporaries == pytest.approx(200 * 64 * unit["approximate_search_bytes_per_neighbour"] / MB, rel=REL)
    scanned = queries * n_keys * min(nprobe, nlist) / nlist
    threads = 16 * unit["pq_search_thread_efficiency"]
    assert seconds == pytest.approx(scanned * 8 * unit["pq_seconds_per_code_byte"] / threads, rel=REL)


def test_reranking_adds_a_random_read_a_neighbour(unit):
    config = {"knn": {"k": 64, "nprobe": 1}}
    plain = knnlm_costs.search(config, 5000, 32, 300, 200, "IVF2,PQ8", 1)
    reranked = knnlm_costs.search(config, 5000, 32, 300, 200, "IVF2,PQ8", 1, rerank=True)
    assert reranked[:2] == plain[:2]
    assert reranked[2] - plain[2] == pytest.approx(300 * 64 * unit["random_read_seconds"], rel=1e-6)
    on_four = knnlm_costs.search(config, 5000, 32, 300, 200, "IVF2,PQ8", 4, rerank=True)
    plain_four = knnlm_costs.search(config, 5000, 32, 300, 200, "IVF2,PQ8", 4)
    assert on_four[2] - plain_four[2] == pytest.approx(300 * 64 * unit["random_read_seconds"] / 4, rel=1e-6)


def test_an_answer_is_a_distance_an_id_and_a_value_and_its_exact_distance_if_reranked():
    row = np.dtype(np.float32).itemsize + np.dtype(np.int64).itemsize + np.dtype(np.int32).itemsize
    assert knnlm_costs.answer_bytes({}, False) == row
    assert knnlm_costs.answer_bytes({}, True) == row + np.dtype(np.float32).itemsize


@pytest.mark.parametrize("rows", [700, 5000])  # fewer and more rows than a merge chunk
@pytest.mark.parametrize("with_ids", [False, True])
def test_a_merge_holds_one_chunk_of_candidates_and_writes_k_a_row(unit, rows, with_ids):
    from knnlm_limits.shards import MERGE_ROWS

    shards, k, held_rows = 3, 16, 400
    est = knnlm_costs.merge_estimate(_job(), shards, held_rows, rows, k, with_ids)
    chunk = min(MERGE_ROWS, rows) * shards * k * unit["merge_bytes_per_candidate"]
    assert est.mem_mb == pytest.approx(unit["light_process_mb"] + (held_rows * k * 8 + chunk) / MB, rel=REL)
    assert (est.minutes - 1) * 60 == pytest.approx(rows * shards * k * unit["merge_seconds_per_candidate"],
                                                   rel=1e-6)
    # float32 distances and int32 values (and int64 ids)
    assert est.disk_mb == pytest.approx(rows * k * (4 + 4 + (8 if with_ids else 0)) / MB, rel=REL)


# ---------------------------------------------------------------- Macondo evaluations, memory


@pytest.mark.parametrize("uses_gpu", [False, True])
def test_an_evaluation_runs_every_checkpoint_over_its_tokens(unit, uses_gpu):
    """Each of 4 checkpoints loaded and run forward over the Macondo evaluation tokens; two
    copies of the weights on the host; on a GPU, the model and an 8,192-token batch."""
    est = children.evaluation(_job(threads=3, uses_gpu=uses_gpu), SIZE, 4)
    assert est.mem_mb == pytest.approx(unit["process_mb"] + 2 * 4 * SIZE["params"] / MB + unit["macondo_eval_mb"],
                                       rel=REL)
    flops = 2 * SIZE["params"] * unit["macondo_eval_tokens"] * 4
    rate = unit["gpu_fp32_forward_flops"] if uses_gpu else 3 * unit["cpu_flops_per_thread"]
    assert (est.minutes - 1) * 60 == pytest.approx(flops / rate + 4 * unit["checkpoint_load_seconds"], rel=1e-6)
    gpu = (4 * SIZE["params"] + 8192 * SIZE["d"] * unit["activation_bytes_per_token_layer_dim"]) / MB
    assert est.gpu_mem_mb == (pytest.approx(gpu, rel=REL) if uses_gpu else 0.0)
    assert est.disk_mb == 0.0 and est.uses_gpu is uses_gpu


def test_evaluating_an_unknown_model_is_unknown_where_it_would_run():
    est = children.evaluation(_job(uses_gpu=True), None, 4)
    assert not est.known and est.uses_gpu is True


@pytest.mark.parametrize("kl_positions, n_keys", [(100, 1000), (None, 1000), (5000, 1000)])
def test_the_planned_kl_queries_are_the_entries_the_memory_samples(kl_positions, n_keys):
    job = _job({"memory": {"kl_positions": kl_positions}})
    assert memory_costs._kl_queries(job, n_keys) == memory.kl_target_count(n_entries=n_keys, n=kl_positions)


def test_the_planned_memory_is_the_configs_layers_and_expansion_over_the_lms_width():
    """A memory of 2 layers and 3x expansion over the LM's 48-d keys and 701 tokens: the
    parameters of that MemoryMLP, body and head."""
    from knnlm_limits.memory_mlp import MemoryConfig, MemoryMLP

    mlp = MemoryMLP(MemoryConfig(key_width=SIZE["d"], vocab_size=SIZE["vocab"], layers=2, expansion=3))
    head = mlp.head.weight.numel()
    body = sum(p.numel() for p in mlp.parameters()) - head
    assert memory_costs._memory_params(_job({"memory": {"layers": 2}}), SIZE, 3) == {"body": body, "head": head}


# ---------------------------------------------------------------- the plan's plumbing


def test_record_appends_one_json_line_a_job_for_make_plan(tmp_path, monkeypatch):
    path = tmp_path / "estimates.jsonl"
    est = costs.Estimate(12.5, 3.0, gpu_mem_mb=7.0, disk_mb=2.5, notes=["a note"])
    monkeypatch.delenv(costs.ESTIMATES_FILE, raising=False)
    costs.record("datastore", {"shard": 0}, est)  # not asked for: nothing written, nothing fails
    assert not path.exists()
    monkeypatch.setenv(costs.ESTIMATES_FILE, str(path))
    costs.record("datastore", {"shard": 0, "model": "corpus_lm/a"}, est)
    costs.record("knn_merge", {}, costs.Estimate(None, None))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"rule": "datastore", "wildcards": {"shard": "0", "model": "corpus_lm/a"}, "known": True, "mem_mb": 12.5,
         "minutes": 3.0, "gpu_mem_mb": 7.0, "disk_mb": 2.5, "notes": ["a note"]},
        {"rule": "knn_merge", "wildcards": {}, "known": False, "mem_mb": None, "minutes": None, "gpu_mem_mb": 0.0,
         "disk_mb": 0.0, "notes": []}]


PARTITIONS = {"cluster": {"partitions": [
    {"name": "gpu-tiny", "gpu_mem_mb": 1, "max_runtime": 10_000},  # a GPU partition listed first
    {"name": "gpu80", "gpu_mem_mb": 80_000, "max_runtime": 600},
    {"name": "cpu", "gpu_mem_mb": 0, "max_runtime": 600},
    {"name": "cpu-long", "gpu_mem_mb": 0, "max_runtime": 4000}]}}


def test_a_cpu_job_goes_to_a_cpu_partition_whatever_the_order():
    assert costs.partition(PARTITIONS, costs.Estimate(1, 1), 60) == "cpu"


def test_a_job_fits_a_partition_with_exactly_its_runtime():
    assert costs.partition(PARTITIONS, costs.Estimate(1, 1), 600) == "cpu"
    assert costs.partition(PARTITIONS, costs.Estimate(1, 1), 601) == "cpu-long"
    assert costs.partition(PARTITIONS, costs.Estimate(1, 1, gpu_mem_mb=9000, uses_gpu=True), 600) == "gpu80"


def test_a_job_longer_than_every_partition_goes_to_the_longest():
    assert costs.partition(PARTITIONS, costs.Estimate(1, 1), 5000) == "cpu-long"
    assert costs.partition(PARTITIONS, costs.Estimate(1, 1, gpu_mem_mb=9000, uses_gpu=True), 5000) == "gpu80"
    # an unknown GPU job (its size unknown) still asks for a GPU partition
    assert costs.partition(PARTITIONS, base.unknown("why", uses_gpu=True), 60) == "gpu-tiny"


def test_estimate_passes_the_rule_threads_gpu_and_workflow_folder_to_the_job(workdir, unit):
    """The datastore of a local LM named relative to the workflow, on 2 CPU threads, then on a
    GPU; the merge of all shards writes ids, that of the first shards does not."""
    config = {**_models_config(), "corpus": {"max_train_tokens": 4000, "eval_tokens": {"valid": 300, "test": 500},
                                             "block_size": 8, "stride": None},
              "knn": {"shards": 2, "batch_tokens": 0, "k": 16}}
    wildcards = {"model": f"pretrained/{folder_name('models/lm')}", "shard": "0"}
    cpu = costs.estimate("datastore", config, wildcards, threads=2, uses_gpu=False, base_dir=workdir)
    flops = 2 * _size_of(TINY_LM)["params"] * 2000
    assert cpu.minutes * 60 == pytest.approx(flops / (2 * unit["cpu_flops_per_thread"]), rel=REL)
    assert cpu.gpu_mem_mb == 0.0 and not cpu.uses_gpu
    gpu = costs.estimate("datastore", config, wildcards, threads=2, uses_gpu=True, base_dir=workdir)
    assert gpu.uses_gpu is True and gpu.gpu_mem_mb > 0
    merged = costs.estimate("knn_merge", config, {}, threads=1, uses_gpu=False, base_dir=workdir)
    first = costs.estimate("knn_merge_first_shards", config, {"size": "2"}, threads=1, uses_gpu=False,
                           base_dir=workdir)
    assert merged.disk_mb == pytest.approx(800 * 16 * (4 + 4 + 8) / MB, rel=REL)
    assert first.disk_mb == pytest.approx(800 * 16 * (4 + 4) / MB, rel=REL)
