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
