"""The memory stage's numbers that test_memory leaves unchecked, against independent truth: a
memory's bytes against its instantiated tensors, the kNN targets' sample and files, and the
table's kNN-LM and PQ rows and frontier points recomputed by hand (from stored files, as the
job reads them)."""

import numpy as np
import pandas as pd
import pytest
import torch

from knnlm_limits import knnlm, memory, memory_mlp, shards
from knnlm_limits.index import Searcher
from knnlm_limits.knnlm import SearchResults

EXACT = {"exact_index": "exact", "exact_max_keys": 10**9, "approximate_index": "IVF4,PQ2", "index_train_sample": 100,
         "nprobe": 1, "rerank": False}


@pytest.mark.parametrize("head", ["lm", "lm_frozen", "random"])
def test_memory_bytes_are_its_tensors_bytes(head):
    """float32 and float16 bytes of an instantiated memory's parameters, its head counted unless
    it is the LM's own (lm_frozen: stored once, with the LM)."""
    lm = torch.nn.Module()
    lm.get_output_embeddings = lambda: torch.nn.Linear(12, 50, bias=False)
    mlp = memory_mlp.build(12, 50, 2, 3, head=head, lm=lm)
    counts = memory.parameters(12, 50, 2, 3)
    body = [p for name, p in mlp.named_parameters() if not name.startswith("head")]
    head_tensor = mlp.head.weight
    assert counts == {"body": sum(p.numel() for p in body), "head": head_tensor.numel()}
    stored = body + ([] if head == "lm_frozen" else [head_tensor])
    got = memory.memory_bytes(counts, head)
    assert got["bytes_fp32"] == sum(p.float().nbytes for p in stored)
    assert got["bytes_fp16"] == sum(p.half().nbytes for p in stored)
    assert got["bytes_fp32_with_head"] == sum(p.float().nbytes for p in body) + head_tensor.float().nbytes
    assert got["bytes_fp32_without_head"] == sum(p.float().nbytes for p in body)


def test_kl_sample_is_every_entry_or_a_seeded_sample():
    np.testing.assert_array_equal(memory.kl_sample(40, None, 3), np.arange(40))
    a, b, c = memory.kl_sample(1000, 30, 3), memory.kl_sample(1000, 30, 3), memory.kl_sample(1000, 30, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and len(np.unique(a)) == 30 and (np.diff(a) > 0).all()


@pytest.mark.parametrize("n, k", [(60, 8), (9, 8), (6, 8)])
def test_kl_target_files_hold_k_or_all_other_entries(tmp_path, n, k):
    """Each sampled entry's row holds min(k, n - 1) neighbours (every other entry when the
    datastore is small), in int64 rows, int32 values and float16 weights summing to 1."""
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((n, 4)).astype(np.float16)
    values = rng.integers(0, 7, n).astype(np.int32)
    rows = np.arange(0, n, 2, dtype=np.int32)
    answer = shards.answer(Searcher.in_memory(keys, EXACT), values, keys[rows].astype(np.float32), k + 1, 0)
    memory.write_kl_targets(tmp_path / "kl", rows, [answer], k, 1.0)
    got_rows, value_file, weight_file = memory.kl_targets(tmp_path / "kl")
    got_values, weights = np.load(value_file), np.load(weight_file)
    assert got_rows.dtype == np.int64 and got_values.dtype == np.int32 and weights.dtype == np.float16
    np.testing.assert_array_equal(got_rows, rows)
    assert got_values.shape == weights.shape == (len(rows), min(k, n - 1))
    np.testing.assert_allclose(weights.astype(np.float64).sum(1), 1.0, atol=2e-3)


def test_lambda_grid_takes_float32_log_probs_in_float64():
    rng = np.random.default_rng(2)
    lm, mem = np.log(rng.uniform(0.01, 1, 5000)).astype(np.float32), np.log(rng.uniform(0.01, 1, 5000))
    assert memory.lambda_grid(lm, mem, [0.1, 0.5]) == memory.lambda_grid(lm.astype(np.float64), mem, [0.1, 0.5])


def _split(rng, n):
    return SearchResults(targets=rng.integers(0, 9, n), lm_logprob=np.log(rng.uniform(0.05, 0.5, n)).astype(np.float32),
                         example=np.zeros(n, np.int64), dists=rng.uniform(0, 4, (n, 3)).astype(np.float32),
                         nbr_values=rng.integers(0, 9, (n, 3)).astype(np.int32))


def test_the_tables_knn_and_pq_rows_and_frontier_by_hand(tmp_path):
    """tables() from stored search results (as the job reads them): the LM row, the kNN-LM row at
    the fixed and the tuned (lambda, T), each PQ datastore's row at the (lambda, T) its own
    validation grid picks (brute force over the grid), and each frontier point's perplexity
    with its bootstrap interval."""
    rng = np.random.default_rng(0)
    files = {}
    for name in ("valid", "test", "pq_valid", "pq_test"):
        _split(rng, 200 if "valid" in name else 300).save(tmp_path / f"{name}.npz")
        files[name] = tmp_path / f"{name}.npz"
    fixed, tuned = (0.25, 1.0), (0.5, 2.0)
    grid = {"lambda": [0.1, 0.5, 0.9], "temperature": [0.5, 3.0]}
    boot = {"bootstrap_resamples": 300, "seed": 0}
    t = memory.tables({"valid": files["valid"], "test": files["test"]}, fixed, tuned, {}, None,
                      {8: {"valid": files["pq_valid"], "test": files["pq_test"], "bytes": 777}}, 10_000, "exact",
                      [0.1, 0.5], grid, boot)
    test, pq_valid, pq_test = (SearchResults.load(files[n]) for n in ("test", "pq_valid", "pq_test"))

    def ppl(logprobs):
        return float(np.exp(-np.mean(np.asarray(logprobs, dtype=np.float64))))

    def mixed(found, lam, temperature):  # log(lam p_knn + (1 - lam) p_lm), p_knn by an explicit sum
        w = np.exp(-found.dists.astype(np.float64) / temperature)
        p_knn = (w * (found.nbr_values == found.targets[:, None])).sum(1) / w.sum(1)
        return np.log(lam * p_knn + (1 - lam) * np.exp(found.lm_logprob.astype(np.float64)))

    table = t["table"].set_index("kind")
    lm = test.lm_logprob.astype(np.float64)
    assert table.loc["lm", "test_ppl_fixed"] == pytest.approx(ppl(lm), rel=1e-12)
    assert table.loc["lm", "test_ppl_tuned"] == pytest.approx(ppl(lm), rel=1e-12) and table.loc["lm", "bytes"] == 0
    knn = table.loc["knn"]
    assert (knn["bytes"], knn["lambda"], knn["temperature"]) == (10_000, 0.5, 2.0)
    assert knn["test_ppl_fixed"] == pytest.approx(ppl(mixed(test, *fixed)), rel=1e-9)
    assert knn["test_ppl_tuned"] == pytest.approx(ppl(mixed(test, *tuned)), rel=1e-9)
    by_hand = {(lam, T): ppl(mixed(pq_valid, lam, T)) for lam in grid["lambda"] for T in grid["temperature"]}
    best = min(by_hand, key=lambda s: (by_hand[s], s))
    pq = table.loc["knn_pq"]
    assert (pq["bytes"], pq["lambda"], pq["temperature"]) == (777, *best)
    assert pq["test_ppl_tuned"] == pytest.approx(ppl(mixed(pq_test, *best)), rel=1e-9)
    assert pq["test_ppl_fixed"] == pytest.approx(ppl(mixed(pq_test, *fixed)), rel=1e-9)
    pq_grid = t["grid"][t["grid"].component == "pq8"]
    for row in pq_grid.to_dict("records"):
        assert row["valid_perplexity"] == pytest.approx(by_hand[(row["lambda"], row["temperature"])], rel=1e-9)
    assert len(pq_grid) == 6
    tokens = t["tokens"]
    np.testing.assert_array_equal(tokens.target, test.targets)
    np.testing.assert_allclose(tokens.knnlm_pq8, mixed(pq_test, *best), rtol=1e-9)
    frontier = t["frontier"].set_index("kind")
    for kind, column, size in (("lm", "lm", 0), ("knn", "knnlm_tuned", 10_000), ("knn_pq", "knnlm_pq8", 777)):
        point = frontier.loc[kind]
        assert point["column"] == column and point["bytes"] == size
        expected = memory.bootstrap_perplexity(tokens[column].to_numpy(), 300, 0)
        assert (point["test_ppl"], point["ci_low"], point["ci_high"]) == pytest.approx(expected, rel=1e-12)
        assert point["test_ppl"] == pytest.approx(ppl(tokens[column]), rel=1e-12)
        assert point["ci_low"] < point["test_ppl"] < point["ci_high"]
    # the same tables from the results held in memory
    held = memory.tables({"valid": SearchResults.load(files["valid"]), "test": test}, fixed, tuned, {}, None,
                         {8: {"valid": pq_valid, "test": pq_test, "bytes": 777}}, 10_000, "exact", [0.1, 0.5], grid,
                         boot)
    pd.testing.assert_frame_equal(held["table"], t["table"])
    pd.testing.assert_frame_equal(held["tokens"], t["tokens"])
    assert "PQ8" in pq["component"] and "exact" in knn["component"]
    assert knnlm.perplexity(lm) == pytest.approx(ppl(lm))
