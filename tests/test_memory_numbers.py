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
    assert list(t["frontier"].component) == ["LM alone", "kNN-LM, datastore", "kNN-LM, PQ8"]
    assert list(tokens.columns[:3]) == ["position", "target", "lm"]
    np.testing.assert_array_equal(tokens.position, np.arange(len(test)))
    assert knnlm.perplexity(lm) == pytest.approx(ppl(lm))


# ------------------------------------------------ the compute the memory table and the control read


def test_training_flops_count_the_trained_parameters_once_each():
    """4 FLOPs a parameter a key (forward and input gradients) and 2 a trained one (weight
    gradients): the LM's frozen head runs but is not trained."""
    counts = {"body": 10, "head": 7}
    assert memory.training_flops(counts, "lm_frozen", 3, 2.0) == 3 * 2.0 * (4 * 17 + 2 * 10)
    assert memory.training_flops(counts, "random", 3, 2.0) == 3 * 2.0 * (4 * 17 + 2 * 17)
    # the control's budget: the training alone where nothing was searched
    assert memory.imitation_flops(counts, "lm_frozen", 3, 2.0, 8, None) == 3 * 2.0 * (4 * 17 + 2 * 10)


def test_target_search_flops_where_the_faiss_count_does_not_reach():
    """By hand: a Flat IVF code costs a distance (2 d); nprobe past nlist probes every list
    once; re-ranking reads at most a shard's keys (10 keys in 3 shards: 4, not 3.33)."""
    d = 8
    assert memory.target_search_flops(10, 1000, d, "IVF4,Flat", 5, 2, False, 1) == 10 * (2 * 4 * d + 1000 * 0.5 * 2 * d)
    assert memory.target_search_flops(10, 1000, d, "IVF4,PQ2", 5, 9, False, 1) == 10 * (2 * 4 * d + 1000 * 1.0 * 2)
    plain = memory.target_search_flops(2, 10, d, "IVF4,PQ2", 7, 1, False, 3)
    reranked = memory.target_search_flops(2, 10, d, "IVF4,PQ2", 7, 1, True, 3)
    assert reranked - plain == 2 * 3 * 2 * d * 4
    settings = {"n": 2, "k": 7, "nprobe": 1, "rerank": True, "shards": 3, "kind": "IVF4,PQ2"}
    assert memory.planned_target_search_flops(10, d, settings) == reranked


def test_target_search_settings_are_what_the_search_cost_follows_from():
    knn = {"k": 8, "nprobe": 4, "rerank": True, "shards": 3, "exact_index": "exact", "approximate_index": "IVF4,PQ2"}
    mem = {"alpha": 0.5, "kl_positions": 100}
    expected = {"n": 100, "k": 8, "nprobe": 4, "rerank": True, "shards": 3}
    assert memory.target_search_settings(knn, mem, "IVF4,PQ2") == {**expected, "kind": "IVF4,PQ2"}
    for exact in ("exact", "Flat", "SQfp16"):  # every exact kind costs the same
        assert memory.target_search_settings(knn, mem, exact) == {**expected, "kind": "exact"}
    assert memory.target_search_settings(knn, {**mem, "alpha": 0}, "IVF4,PQ2") is None  # no kNN targets


def test_more_training_takes_at_least_one_step():
    assert memory.more_training_steps("compute", 1.0, 1e6, 100, 1.0, 10) == 1
    assert memory.more_training_steps("epochs", 0.0, 1e6, 100, 0.001, 10) == 1
    assert memory.more_training_steps("compute", 6 * 1e6 * 100 * 2.5, 1e6, 100, 1.0, 10) == 3
    assert memory.more_training_steps("epochs", 0.0, 1e6, 100, 2.0, 1001) == 21


def test_kl_queries_are_the_sampled_entries_keys_across_shards(tmp_path):
    rng = np.random.default_rng(3)
    keys = rng.standard_normal((23, 4)).astype(np.float16)
    files = []
    for i, (a, b) in enumerate([(0, 9), (9, 9), (9, 23)]):  # an empty shard between two
        files.append(tmp_path / f"keys{i}.npy")
        np.save(files[-1], keys[a:b])
    rows = np.array([0, 8, 9, 22], dtype=np.int32)
    memory.write_kl_queries(tmp_path / "queries", files, rows)
    got_rows, got_keys = np.load(tmp_path / "queries" / "rows.npy"), np.load(tmp_path / "queries" / "keys.npy")
    assert got_rows.dtype == np.int64 and got_keys.dtype == np.float32
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got_keys, keys[rows].astype(np.float32))


def test_positions_rise_across_shards_an_empty_one_included(tmp_path):
    parts = [[0, 1, 5], [], [6, 9]]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"positions{i}.npy")
        np.save(paths[-1], np.asarray(part, dtype=np.int64))
    memory.check_one_entry_per_position(paths)
    memory.check_one_entry_per_position([str(p) for p in paths], chunk=2)
    np.save(paths[2], np.asarray([5, 9], dtype=np.int64))  # the last shard repeats the first's last position
    with pytest.raises(ValueError, match=r"positions2\.npy: positions do not strictly rise.*rebuild the datastore"):
        memory.check_one_entry_per_position(paths)


def _memory_tables(tmp_path):
    """memory.tables at one point with two memories (an imitating one and its alpha-0 control)
    and the more-training control, from random stored search results."""
    rng = np.random.default_rng(5)
    files = {}
    for name in ("valid", "test"):
        _split(rng, 200 if name == "valid" else 300).save(tmp_path / f"{name}.npz")
        files[name] = tmp_path / f"{name}.npz"
    valid, test = SearchResults.load(files["valid"]), SearchResults.load(files["test"])
    fixed, lambdas = (0.25, 1.0), [0.1, 0.4, 0.7]
    boot = {"bootstrap_resamples": 200, "seed": 1}
    memories = {}
    for i, (name, objective) in enumerate([("values-x2", "values"), ("imitation-x2", "imitation")]):
        memories[name] = {
            "objective": objective,
            "logprobs": {"valid": np.log(rng.uniform(0.02, 0.6, 200)), "test": np.log(rng.uniform(0.02, 0.6, 300))},
            "footprint": {"bytes_fp32": 4000 + i, "bytes_fp16": 2000 + i, "train_steps": 30 + i,
                          "train_flops": 1.5e9 + i, "target_search_flops": 2.5e8 * i},
            "costs": pd.DataFrame({"method": ["memory", "search"], "device": ["cpu", "cpu"], "ms": [1.0 + i, 2.0]}),
        }
    more = {"valid": np.log(rng.uniform(0.05, 0.5, 200)), "test": np.log(rng.uniform(0.05, 0.5, 300)),
            "extra_steps": 44, "train_flops": 1.75e9}
    t = memory.tables({"valid": files["valid"], "test": files["test"]}, fixed, (0.5, 2.0), memories, more, {}, 10_000,
                      "exact", lambdas, {"lambda": [0.5], "temperature": [1.0]}, boot)

    return t, valid, test, memories, more, fixed, lambdas


def test_the_tables_memory_and_more_training_rows_by_hand(tmp_path):
    """tables() with two memories and the more-training control: each memory's rows (alone, and
    with the LM at lambda_m tuned on validation by brute force, and at the kNN-LM's fixed
    lambda), their bytes, steps, compute and objective; the control's row; the grid's lambda_m
    rows; the frontier's memory points; the timing rows, memory first; every label."""
    t, valid, test, memories, more, fixed, lambdas = _memory_tables(tmp_path)

    def ppl(logprobs):
        return float(np.exp(-np.mean(np.asarray(logprobs, dtype=np.float64))))

    def mix(mem, lam):  # log(lam p_mem + (1 - lam) p_lm), in probabilities
        return np.log(lam * np.exp(mem) + (1 - lam) * np.exp(test.lm_logprob.astype(np.float64)))

    table = t["table"].set_index("component")
    assert list(t["table"].component[:3]) == ["LM", "LM trained 44 steps further", "kNN-LM, datastore (float16 keys, exact)"]
    control = table.loc["LM trained 44 steps further"]
    assert (control["kind"], control["bytes"], control["extra_steps"]) == ("more_training", 0, 44)
    assert (control["train_flops"], control["target_search_flops"]) == (1.75e9, 0.0)
    assert control["test_ppl_fixed"] == control["test_ppl_tuned"] == pytest.approx(ppl(more["test"]), rel=1e-12)
    np.testing.assert_array_equal(t["tokens"].lm_more, more["test"])
    grid = t["grid"].set_index(["component", "lambda"])
    frontier = t["frontier"].set_index("component")
    for i, (name, entry) in enumerate(memories.items()):
        foot, mem = entry["footprint"], entry["logprobs"]["test"]
        by_hand = {lam: ppl(np.log(lam * np.exp(entry["logprobs"]["valid"])
                                   + (1 - lam) * np.exp(valid.lm_logprob.astype(np.float64)))) for lam in lambdas}
        best = min(by_hand, key=lambda lam: (by_hand[lam], lam))
        for lam in lambdas:
            assert grid.loc[(f"memory {name}", lam), "valid_perplexity"] == pytest.approx(by_hand[lam], rel=1e-12)
            assert np.isnan(grid.loc[(f"memory {name}", lam), "temperature"])
        alone, joint = table.loc[f"memory {name} alone"], table.loc[f"LM + memory {name}"]
        for row in (alone, joint):
            assert (row["bytes"], row["objective"]) == (foot["bytes_fp32"], entry["objective"])
            assert (row["train_flops"], row["target_search_flops"]) == (foot["train_flops"], foot["target_search_flops"])
        assert alone["kind"] == "memory_alone" and joint["kind"] == "memory"
        assert alone["test_ppl_fixed"] == alone["test_ppl_tuned"] == pytest.approx(ppl(mem), rel=1e-12)
        assert (joint["lambda"], joint["bytes_fp16"], joint["train_steps"]) == (best, foot["bytes_fp16"],
                                                                               foot["train_steps"])
        assert joint["test_ppl_tuned"] == pytest.approx(ppl(mix(mem, best)), rel=1e-9)
        assert joint["test_ppl_fixed"] == pytest.approx(ppl(mix(mem, fixed[0])), rel=1e-9)  # the kNN-LM's lambda
        point = frontier.loc[f"LM + memory {name}"]
        assert (point["kind"], point["bytes"], point["objective"], point["column"]) == (
            "memory", foot["bytes_fp32"], entry["objective"], f"lm_memory_{name}")
        expected = memory.bootstrap_perplexity(mix(mem, best), 200, 1)
        assert (point["test_ppl"], point["ci_low"], point["ci_high"]) == pytest.approx(expected, rel=1e-9)
        np.testing.assert_array_equal(t["tokens"][f"memory_{name}"], mem)
    assert (frontier.loc["LM alone", "kind"], frontier.loc["kNN-LM, datastore", "kind"]) == ("lm", "knn")
    assert (frontier.loc["LM alone", "objective"], frontier.loc["kNN-LM, datastore", "objective"]) == ("", "")
    costs = t["costs"]
    assert list(costs.columns) == ["memory", "method", "device", "ms"] and list(costs.index) == [0, 1, 2, 3]
    assert list(costs.memory) == ["values-x2", "values-x2", "imitation-x2", "imitation-x2"]
    assert list(costs.ms) == [1.0, 2.0, 2.0, 2.0]
    # no memory, no control: the table still has its timing frame, with its memory column
    bare = memory.tables({"valid": valid, "test": test}, fixed, (0.5, 2.0), {}, None, {}, 10_000,
                         "exact", lambdas, {"lambda": [0.5], "temperature": [1.0]}, {"bootstrap_resamples": 200, "seed": 1})
    assert list(bare["costs"].columns) == ["memory"] and len(bare["costs"]) == 0
    assert "more_training" not in set(bare["table"].kind)


# ------------------------------------------------ the memory's loss over several chunks of rows


def test_the_fused_loss_over_several_chunks_is_the_loss_over_one(monkeypatch):
    """The loss and its gradients summed chunk by chunk (2 rows a chunk, 9 rows, keys of width
    6 < 9) equal the one-chunk pass: a chunk's total or W's gradient that replaced the running
    sum, or chunks counted over the key width, would differ."""
    rng = np.random.default_rng(4)
    vocab, d, n, k = 11, 6, 9, 3
    model = memory_mlp.build(d, vocab, 1, 2, head="random", seed=4)
    kl_values = rng.integers(0, vocab, (4, k))
    w = rng.random((4, k)).astype(np.float32)
    w /= w.sum(1, keepdims=True)
    batch = memory_mlp.Batch(torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32)),
                             torch.from_numpy(rng.integers(0, vocab, n)), torch.tensor([0, 3, 5, 8]),
                             torch.from_numpy(kl_values), torch.from_numpy(w),
                             torch.from_numpy(memory_mlp.neg_entropy(kl_values, w.astype(np.float64))))

    def loss_and_grads():
        model.zero_grad()
        loss = memory_mlp.memory_loss(model, batch, 0.4)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    whole, whole_grads = loss_and_grads()
    monkeypatch.setattr(memory_mlp, "LOSS_CHUNK_CPU", 2 * vocab)
    chunked, chunked_grads = loss_and_grads()
    assert chunked == pytest.approx(whole, rel=1e-6)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_neg_entropy_is_sum_q_log_q_by_brute_force():
    """sum_y q(y) log q(y), q the weights summed by value: token 0 counts, a value repeated sums
    its weights, a zero weight and -1 (no neighbour) add nothing, and a last row with no target
    still has its 0."""
    values = np.array([[0, 0, 3, -1], [2, 0, 5, 5], [4, 1, -1, -1], [-1, -1, -1, -1]])
    weights = np.array([[0.25, 0.25, 0.5, 0.0], [0.5, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0] * 4])
    expected = []
    for row_values, row_weights in zip(values, weights):
        q = {}
        for v, wt in zip(row_values, row_weights):
            if v >= 0 and wt > 0:
                q[v] = q.get(v, 0.0) + wt
        expected.append(sum(p * np.log(p) for p in q.values()))
    got = memory_mlp.neg_entropy(values, weights)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_the_memory_findings_from_the_table_by_hand(tmp_path):
    """findings.memory on memory.tables' output: the more-training control against LM + memory,
    the imitation against its values-only control, the memory alone against the LM (each a
    paired bootstrap of a perplexity difference, its point recomputed here), the controls'
    steps and FLOPs in the notes, and the bytes ratio."""
    from knnlm_limits import findings

    t, valid, test, memories, more, fixed, lambdas = _memory_tables(tmp_path)
    tokens = t["tokens"]
    rows = {(r["finding"], r.get("setting")): r
            for r in findings.memory(tokens, t["table"], "imitation-x2", "values-x2", "lm", {}, 200, 1)}

    def ppl(column):
        return float(np.exp(-tokens[column].astype(np.float64).mean()))

    more_row = rows[("memory_beats_more_training", "tuned")]
    assert more_row["measured"] == pytest.approx(ppl("lm_more") - ppl("lm_memory_imitation-x2"), rel=1e-9)
    assert "44 steps further" in more_row["note"] and "1.75e+09 FLOPs" in more_row["note"]
    helps = rows[("memory_imitation_helps", "tuned")]
    assert helps["measured"] == pytest.approx(ppl("lm_memory_values-x2") - ppl("lm_memory_imitation-x2"), rel=1e-9)
    alone = next(r for key, r in rows.items() if key[0] == "memory_alone_beats_lm")
    assert alone["measured"] == pytest.approx(ppl("lm") - ppl("memory_imitation-x2"), rel=1e-9)
    ratio = next(r for key, r in rows.items() if key[0] == "memory_smaller_than_datastore")
    assert ratio["measured"] == ratio["ci_low"] == ratio["ci_high"] == 10_000 / 4001
    for row in (more_row, helps, alone):
        assert row["ci_low"] < row["measured"] < row["ci_high"]
