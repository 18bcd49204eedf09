"""The sharded datastore in the whole tiny DAG: the same results with 1, 2 and 3 shards, the
memory's targets against brute force, the first shard against a datastore of its windows
alone, and what a change of the shards (their count, a size of the curve, a failed shard)
plans again."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from knnlm_limits import knnlm, memory, shards
from tests.support import ROOT, planned_jobs, snakemake

TINY = yaml.safe_load((ROOT / ".tests/config.yaml").read_text())
POINT = "corpus_lm/tiny/step-20/mlp_input"
# the kNN path from the datastore on: what a change of knn.shards may plan
KNN_PATH = {"datastore", "knn_queries", "knn_shard_search", "knn_merge", "knn_merge_first_shards", "datastore_scaling",
            "knnlm_grid", "projection", "table1", "knn_gains", "knn_neighbours", "search_fidelity",
            "memory_target_queries", "memory_target_shard", "memory_targets", "train_memory", "more_training",
            "frontier_trained", "frontier_shard", "frontier_pq", "memory_table", "findings", "all"}
# the CSVs of Table 1, the memory and the inspection pages whose numbers cannot depend on the
# shards (bytes and query times aside: below)
SAME = ["table1.csv", "grid.csv", "findings.csv", "projection_tokens.csv", "gain_tokens.csv", "neighbours.csv",
        "memory_tokens.csv", "memory_grid.csv", "fidelity.csv"]


def config_file(tmp_path, results, **knn):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["knn"] = {**config.get("knn", {}), **knn}
    config["results"] = str(results)
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# what the kNN path writes: a copy of the finished DAG without them is run again with other shards
KNN_OUTPUTS = ("datastores", "indexes", "knn", "memory", "frontier", "table1", "findings.csv", "findings.md",
               "findings_by_scale.csv", "findings_by_scale.png", "perplexity_by_key.csv", "perplexity_by_key.png",
               "perplexity_by_key.pdf")


@pytest.fixture(scope="module")
def resharded(tiny_runs, tmp_path_factory):
    """The finished tiny DAG (2 shards) copied, its kNN path's outputs removed, and run again
    with 1 shard and with 3 (their curve at 1 and 3 shards), the dry run's plan before each.
    (A copy: Snakemake's record of the original's inputs stays with the original's paths, and
    an output whose recorded inputs changed is what a change of knn.shards reruns in place:
    tests/test_recompute.py.)"""
    out = {2: {"results": tiny_runs[0], "planned": {}}}
    for n, sizes in ((1, None), (3, [1, 3])):
        folder = tmp_path_factory.mktemp(f"shards-{n}")
        results = folder / "results"
        shutil.copytree(tiny_runs[0], results, symlinks=True)
        for name in KNN_OUTPUTS:
            path = results / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)  # no index: exact search
        config = config_file(folder, results, shards=n, datastore_sizes=sizes)
        planned = planned_jobs(snakemake("-n", "--configfile", str(config)).stdout)
        snakemake("--cores", "2", "--configfile", str(config))
        out[n] = {"results": results, "planned": planned, "config": config, "folder": folder}
    return out


def test_the_knn_path_of_another_shard_count_is_its_own_jobs(resharded):
    for n in (1, 3):
        planned = resharded[n]["planned"]
        assert set(planned) <= KNN_PATH, set(planned) - KNN_PATH  # no training, no corpus, no Figure 1-3
        assert planned["datastore"] == n and planned["knn_shard_search"] == n and planned["memory_target_shard"] == n


def test_results_are_the_same_whatever_the_shard_count(resharded):
    """Bitwise on this machine: the same keys give the same distances, whichever shard holds
    them. Held to 1e-9 relative: a BLAS kernel that rounded a key's distance by where it sits
    in its block would show here (a tie it reordered at the k-th neighbour: in the counts below)."""
    base = resharded[2]["results"] / "table1" / POINT
    for n in (1, 3):
        other = resharded[n]["results"] / "table1" / POINT
        for name in SAME:
            a, b = pd.read_csv(base / name), pd.read_csv(other / name)
            assert list(a.columns) == list(b.columns), name
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=0, obj=name)
    # what the datastore stores does depend on its shards: one .npy header a file, and each PQ
    # shard's copy of the trained quantiser and codebooks; the perplexities do not
    tables = {n: pd.read_csv(resharded[n]["results"] / "table1" / POINT / "memory.csv").set_index("component")
              for n in (1, 2, 3)}
    exact = "kNN-LM, datastore (float16 keys, exact)"
    assert tables[1].bytes[exact] < tables[2].bytes[exact] < tables[3].bytes[exact] < 1.001 * tables[1].bytes[exact]
    found = {n: pd.read_csv(resharded[n]["results"] / "table1" / POINT / "memory_findings.csv").set_index("finding")
             for n in (1, 2, 3)}
    for n in (1, 3):
        pd.testing.assert_frame_equal(tables[2].drop(columns="bytes"), tables[n].drop(columns="bytes"),
                                      check_exact=False, rtol=1e-9, obj=f"memory.csv, {n} shards")
        by_bytes = ["memory_smaller_than_datastore"]
        pd.testing.assert_frame_equal(found[2].drop(index=by_bytes), found[n].drop(index=by_bytes),
                                      check_exact=False, rtol=1e-9, obj=f"memory_findings.csv, {n} shards")


def test_merged_neighbours_are_the_same_whatever_the_shard_count(resharded):
    found = {n: knnlm.SearchResults.load(resharded[n]["results"] / "knn" / POINT / "test.npz") for n in (1, 2, 3)}
    ids = {n: np.load(resharded[n]["results"] / "knn" / POINT / "test_ids.npy") for n in (1, 2, 3)}
    for n in (2, 3):
        np.testing.assert_array_equal(found[n].dists, found[1].dists)
        # ties at the k-th distance may keep another of the tied entries: count them, set them aside
        tied = (found[1].dists[:, -1:] == found[1].dists).sum(1) > 1
        same = (ids[n] == ids[1]).all(1)
        assert (same | tied).all()
        np.testing.assert_array_equal(found[n].nbr_values[same], found[1].nbr_values[same])
        print(f"{n} shards: {(~same).sum()} of {len(same)} rows differ, all at a tie ({tied.sum()} tied rows)")


def test_sharded_memory_targets_are_brute_force_leave_one_out(resharded):
    """Every sampled entry's stored target: softmax(-d / T) over its k nearest other entries of
    the whole datastore (float64 brute force over the shards' keys)."""
    results = resharded[3]["results"]
    folders = [results / "datastores" / POINT / "3-shards" / f"shard-{s}" for s in range(3)]
    keys = np.concatenate([np.load(f / "keys.npy") for f in folders]).astype(np.float64)
    values = np.concatenate([np.load(f / "values.npy") for f in folders])
    rows, value_file, weight_file = memory.kl_targets(results / "memory" / POINT / "kl_targets")
    got_values, got_weights = np.load(value_file), np.load(weight_file).astype(np.float64)
    k, temperature = TINY["knn"]["k"], 1.0
    vocab = int(values.max()) + 1
    checked = rows[:: max(1, len(rows) // 200)]
    worst = 0.0
    for row in checked:
        i = int(np.searchsorted(rows, row))
        dist = ((keys - keys[row]) ** 2).sum(1)
        dist[row] = np.inf
        nearest = np.argsort(dist, kind="stable")[:k]
        w = np.exp(-(dist[nearest] - dist[nearest].min()) / temperature)
        expected = np.bincount(values[nearest], weights=w / w.sum(), minlength=vocab)
        got = np.bincount(got_values[i], weights=got_weights[i], minlength=vocab)
        worst = max(worst, np.abs(got - expected).sum() / 2)
    # total variation: float16 weights (5e-4 each, relative) and float32 distances; a wrong
    # neighbour (the entry itself, another shard's missing) moves a whole weight
    assert worst < 5e-3, worst


def test_the_first_shard_is_a_datastore_of_its_windows_alone(resharded, tmp_path):
    """The kNN-LM over the first of 3 shards (merged alone) equals one whose datastore is built
    from those windows by datastore.build and searched exactly in one piece."""
    from knnlm_limits import datastore, model
    from knnlm_limits.index import Searcher
    from knnlm_limits.tokens import load_stream, windows

    results = resharded[3]["results"]
    first = knnlm.SearchResults.load(results / "knn" / POINT / "3-shards" / "first-1" / "test.npz")
    manifest = shards.read_manifest(results / "datastores" / POINT / "3-shards" / "shard-0" / "shard.json")
    examples = windows(load_stream(results / "data/tokens/corpus_train.npz"), TINY["corpus"]["block_size"])
    part, offset, window_range = shards.shard_examples(examples, 8192, 0, 3)
    assert (offset, list(window_range)) == (0, manifest["windows"])
    lm = model.load_lm(str(results / "models/corpus_lm/tiny/step-20"), device=torch.device("cpu"))
    n = datastore.build(lm, part, tmp_path / "k.npy", tmp_path / "v.npy")
    assert n == manifest["entries"]
    lm_only = knnlm.SearchResults.load(results / "knn" / POINT / "test_lm.npz")
    queries = np.load(results / "knn" / POINT / "test_queries.npy")
    alone = knnlm.search_neighbours(Searcher(tmp_path / "k.npy", "exact"), np.load(tmp_path / "v.npy"), lm_only,
                                    queries, TINY["knn"]["k"])
    np.testing.assert_array_equal(knnlm.knnlm_logprob(first, 0.25, 1.0), knnlm.knnlm_logprob(alone, 0.25, 1.0))
    curve = pd.read_csv(results / "table1" / POINT / "datastore_scaling.csv")
    assert curve.shards.tolist() == [1, 3] and curve.entries.tolist()[0] == n


def test_adding_a_size_to_the_curve_plans_only_its_merge_and_what_reads_it(resharded):
    run = resharded[3]
    config = config_file(run["folder"], run["results"], shards=3, datastore_sizes=[1, 2, 3])
    assert planned_jobs(snakemake("-n", "--configfile", str(config)).stdout) == {
        "knn_merge_first_shards": 1, "datastore_scaling": 1, "findings": 1, "all": 1}


def test_a_failed_shard_reruns_alone(resharded, tmp_path):
    """A run in which shard 1's search failed: its answer missing (Snakemake deletes a failed
    job's outputs), and nothing after it run (the merge and what reads it). Planned again: that
    shard's search alone (not the others', whose answers stand), the merge and what follows."""
    run = resharded[3]
    results = tmp_path / "results"
    shutil.copytree(run["results"], results, symlinks=True)
    knn = results / "knn" / POINT
    shutil.rmtree(knn / "3-shards" / "shard-1")
    for name in ("valid.npz", "test.npz", "test_ids.npy", "test_exact_sample.npz"):
        (knn / name).unlink()
    for name in ("table1", "findings.csv", "findings.md"):
        shutil.rmtree(results / name) if (results / name).is_dir() else (results / name).unlink()
    config = config_file(tmp_path, results, shards=3, datastore_sizes=[1, 3])
    planned = planned_jobs(snakemake("-n", "--configfile", str(config)).stdout)
    assert planned["knn_shard_search"] == 1 and planned["knn_merge"] == 1
    assert not {"datastore", "knn_queries", "memory_target_shard", "frontier_shard"} & set(planned)
    # the first shard's merge reads shard 0 only: it stands
    assert "knn_merge_first_shards" not in planned
