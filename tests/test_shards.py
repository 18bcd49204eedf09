"""The datastore in shards against the unsharded datastore and brute force: the shards are the
datastore entry for entry, their merged neighbours are the unsharded search's (exact, IVF-PQ
over a shared quantizer, with and without re-ranking; ties at the k-th distance set aside and
counted), the leave-one-out targets are brute force's, and the first s shards are a datastore
of that prefix of the training windows."""

from pathlib import Path

import numpy as np
import pytest

from knnlm_limits import datastore, index, knnlm, memory, model, shards
from knnlm_limits.index import EXACT, Searcher
from knnlm_limits.tokens import Examples, windows


def write_shards(folder: Path, keys: np.ndarray, values: np.ndarray, bounds: list[int]) -> dict:
    """The arrays cut at `bounds` into shard files as the datastore stage writes them."""
    out = {"key_files": [], "value_files": [], "manifests": []}
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        d = folder / f"shard-{s}"
        d.mkdir(parents=True)
        np.save(d / "keys.npy", keys[a:b])
        np.save(d / "values.npy", values[a:b])
        shards.write_manifest(d / "shard.json", s, len(bounds) - 1, a, b - a, (s, s + 1))
        out["key_files"].append(d / "keys.npy")
        out["value_files"].append(d / "values.npy")
        out["manifests"].append(d / "shard.json")
    return out


def sharded_answers(files: dict, queries: np.ndarray, k: int, folder: Path, index_dirs=None, settings=None):
    """Every shard's written answer to `queries`, read back."""
    answers = []
    for s, (key_file, value_file, manifest) in enumerate(zip(files["key_files"], files["value_files"],
                                                             files["manifests"])):
        searcher = Searcher.of_shard(key_file, None if index_dirs is None else index_dirs[s], settings or {})
        out = folder / f"answer-{s}"
        out.mkdir(parents=True)
        shards.answer_shard(searcher, np.load(value_file), queries, k, shards.read_manifest(manifest)["offset"], out, "q")
        answers.append(shards.read_answer(out, "q"))
    return answers


def merge_all(answers, k, own=None):
    parts = [list(p) for p in zip(*[(d, i, v) for _, d, i, v in shards.merged(answers, k, own=own, rows=7)])]
    return tuple(np.concatenate(p) for p in parts)


def tie_rows(full_dists: np.ndarray, k: int) -> np.ndarray:
    """Rows whose k-th and (k+1)-th nearest distances are equal: which of them is kept is tie order."""
    return full_dists[:, k - 1] == full_dists[:, k]


@pytest.fixture
def store():
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((3000, 16)).astype(np.float16)
    keys[1000:1010] = keys[5]  # duplicate keys: exact ties
    values = rng.integers(0, 50, len(keys)).astype(np.int32)
    queries = np.concatenate([rng.standard_normal((200, 16)), keys[[5, 17, 2999]].astype(np.float64)]).astype(np.float32)
    return keys, values, queries


# ---------------------------------------------------------------- cutting the training split


@pytest.mark.parametrize("n_shards", [1, 2, 3, 5])
def test_shards_are_whole_batches_covering_every_window_once(n_shards):
    from knnlm_limits.tokens import batches_by_tokens

    examples = windows(np.arange(5000) % 97, 32, 16)
    ranges = shards.batch_ranges(examples, 256, n_shards)
    assert len(ranges) == n_shards and ranges[0][0] == 0 and ranges[-1][1] == len(examples)
    assert all(a < b for a, b in ranges) and all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    starts = {batch[0] for batch in batches_by_tokens(examples, 256)}
    assert all(a in starts for a, _ in ranges)  # each shard starts where a batch of the unsharded datastore does
    entries = [shards.shard_examples(examples, 256, s, n_shards)[0].n_scored() for s in range(n_shards)]
    assert sum(entries) == examples.n_scored()
    offsets = [shards.shard_examples(examples, 256, s, n_shards)[1] for s in range(n_shards)]
    assert offsets == list(np.cumsum([0, *entries[:-1]]))


def test_more_shards_than_batches_is_an_error_naming_the_key():
    with pytest.raises(shards.ShardError, match="knn.shards 9 exceeds the datastore's 8 batches"):
        shards.batch_ranges(windows(np.arange(1025) % 7, 32), 128, 9)


def test_shard_datastores_concatenated_are_the_unsharded_datastore(tmp_path):
    """Keys (bitwise), values and positions: each key is computed in the batch it is in unsharded."""
    lm = model.build_model(60, 2, 32, 2, 32, seed=2).eval()
    examples = windows(np.random.default_rng(1).integers(0, 60, 700), 32, 16)
    datastore.build(lm, examples, tmp_path / "k.npy", tmp_path / "v.npy", tmp_path / "p.npy", batch_tokens=96)
    parts = {"k": [], "v": [], "p": []}
    for s in range(3):
        part, offset, _ = shards.shard_examples(examples, 96, s, 3)
        d = tmp_path / f"s{s}"
        d.mkdir()
        n = datastore.build(lm, part, d / "k.npy", d / "v.npy", d / "p.npy", batch_tokens=96)
        assert offset == sum(len(np.load(tmp_path / f"s{t}/v.npy")) for t in range(s)) and n > 0
        for name in parts:
            parts[name].append(d / f"{name}.npy")
    for name in parts:
        whole = np.load(tmp_path / f"{name}.npy")
        assert np.array_equal(np.asarray(shards.ShardedRows(parts[name])), whole)
        assert whole.tobytes() == np.concatenate([np.load(f) for f in parts[name]]).tobytes()


def test_sharded_rows_read_any_rows_across_files(tmp_path, store):
    keys, values, _ = store
    files = write_shards(tmp_path, keys, values, [0, 1, 1200, 3000])
    view = shards.ShardedRows(files["key_files"])
    rows = np.array([0, 1, 2, 1199, 1200, 2999])
    assert view.shape == keys.shape and np.array_equal(view[rows], keys[rows]) and np.array_equal(view[5], keys[5])
    assert np.array_equal(view[1190:1210], keys[1190:1210])
    assert np.array_equal(shards.ShardedRows(files["value_files"])[rows], values[rows])
    with pytest.raises(IndexError):
        view[np.array([3000])]


def test_shards_that_do_not_follow_each_other_are_refused(tmp_path, store):
    keys, values, _ = store
    files = write_shards(tmp_path, keys, values, [0, 1000, 3000])
    with pytest.raises(shards.ShardError, match="starts at entry 1000, the shards before it end at 0"):
        shards.offsets(files["manifests"][1:])


# ---------------------------------------------------------------- the merged neighbours


@pytest.mark.parametrize("bounds", [[0, 3000], [0, 7, 1001, 3000], [0, 1000, 1005, 2000, 3000]])
def test_merged_exact_neighbours_are_the_unsharded_searchs(tmp_path, store, bounds):
    keys, values, queries = store
    k = 40
    answers = sharded_answers(write_shards(tmp_path, keys, values, bounds), queries, k, tmp_path)
    dists, ids, found = merge_all(answers, k)
    exact_d, exact_i = index.exact_search(keys, queries, k + 1)
    ties = tie_rows(exact_d, k)
    # the brute-force reference, float64: the same neighbours by distance (rounding aside)
    wide = ((queries[:, None, :].astype(np.float64) - keys[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(dists, np.sort(wide, axis=1)[:, :k], rtol=1e-5, atol=1e-4)
    # against the unsharded search: ids and distances exactly, rows tied at the k-th aside
    np.testing.assert_array_equal(dists[~ties], exact_d[~ties, :k])
    for r in np.flatnonzero(~ties):
        assert set(ids[r]) == set(exact_i[r, :k])
    assert np.array_equal(found, values[ids])
    # the duplicated key's queries tie: 11 equal keys at distance 0, the lowest ids kept
    assert ids[200, :11].tolist() == [5, *range(1000, 1010)]


@pytest.mark.parametrize("rerank", [False, True])
def test_merged_ivf_pq_neighbours_over_a_shared_quantizer_are_the_unsharded_indexs(tmp_path, store, rerank):
    keys, values, queries = store
    k, factory, settings = 30, "IVF8,PQ4", {"nprobe": 3, "rerank": rerank, "threads": 2}
    files = write_shards(tmp_path, keys, values, [0, 900, 2100, 3000])
    index.write_trained(tmp_path / "trained", files["key_files"], factory, train_sample=2500)
    dirs = [tmp_path / f"index-{s}" for s in range(3)]
    for d, key_file in zip(dirs, files["key_files"]):
        index.write_shard(d, tmp_path / "trained", key_file)
    dists, ids, found = merge_all(sharded_answers(files, queries, k, tmp_path, dirs, settings), k)

    np.save(tmp_path / "all.npy", keys)
    whole = Searcher(tmp_path / "all.npy", factory, index.build(keys, factory, train_sample=2500), 3, rerank, 2)
    approx_d, approx_i = whole.index.search(queries, k + 1)  # the unsharded index's own order
    ties = tie_rows(approx_d, k)
    expected_d, expected_i = whole.search(queries, k)
    assert ties.sum() < len(queries) / 2, "too many tied rows for the test to say anything"
    for r in np.flatnonzero(~ties):
        assert set(ids[r]) == set(expected_i[r]), r
    np.testing.assert_array_equal(np.sort(dists[~ties], 1), np.sort(expected_d[~ties], 1))
    if rerank:  # ordered by exact distance, from the stored keys
        wide = ((queries[:, None, :] - keys[np.maximum(ids, 0)].astype(np.float32)) ** 2).sum(-1)
        np.testing.assert_allclose(dists, np.where(ids >= 0, wide, np.inf), rtol=1e-5, atol=1e-5)
        assert (np.diff(dists, axis=1) >= 0).all()
    assert np.array_equal(found[ids >= 0], values[ids[ids >= 0]])


def test_sharded_leave_one_out_targets_are_brute_forces(tmp_path, store):
    """Each sampled entry's target: softmax(-d / T) over its k nearest other entries (float64)."""
    keys, values, _ = store
    rows = np.array([0, 5, 1003, 1500, 2999])
    k, temperature = 25, 2.0
    files = write_shards(tmp_path, keys, values, [0, 1002, 2000, 3000])
    queries = keys[rows].astype(np.float32)
    answers = sharded_answers(files, queries, k + 1, tmp_path)
    memory.write_kl_targets(tmp_path / "kl", rows, answers, k, temperature)
    got_rows, value_file, weight_file = memory.kl_targets(tmp_path / "kl")
    got_values, got_weights = np.load(value_file), np.load(weight_file).astype(np.float64)
    assert np.array_equal(got_rows, rows) and got_values.shape == (len(rows), k)
    wide = keys.astype(np.float64)
    for i, row in enumerate(rows):
        dist = ((wide - wide[row]) ** 2).sum(1)
        dist[row] = np.inf
        nearest = np.argsort(dist, kind="stable")[:k]
        w = np.exp(-(dist[nearest] - dist[nearest].min()) / temperature)
        expected = np.bincount(values[nearest], weights=w / w.sum(), minlength=50)
        got = np.bincount(got_values[i], weights=got_weights[i], minlength=50)
        np.testing.assert_allclose(got, expected, atol=2e-3)  # float16 weights: ~5e-4 each
    # and the same as the unsharded leave-one-out
    unsharded = list(knnlm.leave_one_out(Searcher(keys, EXACT),
                                         keys, values, rows, k, temperature))
    assert np.array_equal(np.concatenate([u[1] for u in unsharded]), got_values)


def test_the_first_shards_are_a_datastore_of_that_prefix(tmp_path):
    """The kNN-LM over the first s shards' merged answers equals one whose datastore is built
    from that prefix of the training windows alone."""
    lm = model.build_model(60, 2, 32, 2, 32, seed=4).eval()
    examples = windows(np.random.default_rng(2).integers(0, 60, 900), 32)
    evaluated = windows(np.random.default_rng(3).integers(0, 60, 200), 32)
    found, queries = knnlm.lm_and_queries(lm, evaluated, "mlp_input", 256)
    answers = []
    for s in range(3):
        part, offset, _ = shards.shard_examples(examples, 128, s, 3)
        d = tmp_path / f"shard-{s}"
        d.mkdir()
        datastore.build(lm, part, d / "keys.npy", d / "values.npy", batch_tokens=128)
        shards.answer_shard(Searcher(d / "keys.npy", EXACT), np.load(d / "values.npy"), queries, 16, offset, d, "q")
        answers.append(shards.read_answer(d, "q"))
    first_two = shards.merge_search(found, answers[:2], 16, tmp_path / "first-2.npz")
    stop = shards.batch_ranges(examples, 128, 3)[1][1]  # the windows of the first two shards
    prefix = Examples(examples.tokens, examples.starts[:stop], examples.sizes[:stop], examples.score_start[:stop])
    datastore.build(lm, prefix, tmp_path / "pk.npy", tmp_path / "pv.npy", batch_tokens=128)
    alone = knnlm.search_neighbours(Searcher(tmp_path / "pk.npy", EXACT), np.load(tmp_path / "pv.npy"), found,
                                    queries, 16)
    np.testing.assert_array_equal(knnlm.knnlm_logprob(first_two, 0.25, 1.0), knnlm.knnlm_logprob(alone, 0.25, 1.0))
    assert len(np.load(tmp_path / "pv.npy")) == sum(len(np.load(tmp_path / f"shard-{s}/values.npy")) for s in (0, 1))
