"""Datastores and search: every scored position once, exact search equal to FAISS Flat,
the per-datastore choice of exact or approximate search, exact re-ranking."""


import faiss
import numpy as np
import pytest
import torch

from knnlm_limits import datastore, index, model
from knnlm_limits.tokens import from_sequences, windows

SETTINGS = {"exact_max_keys": 1000, "exact_index": "exact", "approximate_index": "IVF8,PQ4x4",
            "index_train_sample": 2000, "nprobe": 16, "rerank": False}


@pytest.fixture(scope="module")
def tiny():
    lm = model.build_model(80, 2, 32, 2, 32, seed=1).eval()
    rng = np.random.default_rng(0)
    ex = from_sequences([rng.integers(0, 80, size=n) for n in (5, 12, 3, 9)])
    return lm, ex


def test_datastore_holds_every_position(tiny, tmp_path):
    lm, ex = tiny
    n = datastore.build(lm, ex, tmp_path / "k.npy", tmp_path / "v.npy", batch_tokens=10)
    keys, values = datastore.load(tmp_path / "k.npy", tmp_path / "v.npy")
    assert n == sum(len(ex[i]) - 1 for i in range(len(ex))) == len(keys) == len(values)
    assert keys.dtype == np.float16 and values.dtype == np.int32
    assert isinstance(keys, np.memmap)
    row = 0
    for i in range(len(ex)):
        seq = torch.as_tensor(ex[i], dtype=torch.long)[None]
        with torch.no_grad():
            expected = model.keys_only(lm, seq)[0, :-1]
        m = len(ex[i]) - 1
        np.testing.assert_allclose(keys[row : row + m], expected.numpy(), atol=2e-2, rtol=1e-2)
        assert values[row : row + m].tolist() == ex[i][1:].tolist()
        row += m
    mem_keys, mem_values = datastore.in_memory(lm, ex, batch_tokens=10)
    np.testing.assert_array_equal(mem_keys, keys)
    np.testing.assert_array_equal(mem_values, values)


def test_sliding_window_datastore_stores_each_position_once(tmp_path):
    lm = model.build_model(50, 1, 16, 2, 16, seed=0).eval()
    stream = np.random.default_rng(3).integers(0, 50, 101)
    n = datastore.build(lm, windows(stream, 16, 4), tmp_path / "k.npy", tmp_path / "v.npy", tmp_path / "p.npy",
                        batch_tokens=40)
    assert n == 100  # every token after the first, once
    assert np.load(tmp_path / "v.npy").tolist() == stream[1:].tolist()
    # each entry's position: where its value sits in the stream (here every position once, in order)
    positions = np.load(tmp_path / "p.npy")
    assert positions.dtype == np.int64 and positions.tolist() == list(range(1, 101))


def test_positions_say_where_each_entry_came_from(tiny, tmp_path):
    lm, ex = tiny
    datastore.build(lm, ex, tmp_path / "k.npy", tmp_path / "v.npy", tmp_path / "p.npy", batch_tokens=10)
    values, positions = np.load(tmp_path / "v.npy"), np.load(tmp_path / "p.npy")
    assert (ex.tokens[positions] == values).all()
    # by hand: example i's entries are its tokens 1.. at starts[i] + 1..
    expected = np.concatenate([ex.starts[i] + np.arange(1, ex.sizes[i]) for i in range(len(ex))])
    np.testing.assert_array_equal(positions, expected)


def _brute_force(keys, queries, k):
    exact = ((keys.astype(np.float32)[None] - queries[:, None]) ** 2).sum(-1)
    return np.sort(exact, axis=1)[:, :k], np.argsort(exact, axis=1)[:, :k]


@pytest.mark.parametrize("n_queries", [5, 64])  # FAISS switches to BLAS above 20 queries
def test_exact_block_search_equals_flat(tmp_path, n_queries):
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(3000, 16)).astype(np.float16)
    np.save(tmp_path / "k.npy", keys)
    q = rng.normal(size=(n_queries, 16)).astype(np.float32)
    flat = faiss.IndexFlatL2(16)
    flat.add(keys.astype(np.float32))
    d_flat, i_flat = flat.search(q, 50)
    # blocks of 700 keys (16-d float32): the per-block results must merge to Flat's
    d, i = index.exact_search(tmp_path / "k.npy", q, 50, block_bytes=700 * 16 * 4)
    np.testing.assert_array_equal(i, i_flat)
    np.testing.assert_allclose(d, d_flat, rtol=1e-5, atol=1e-5)
    d_bf, i_bf = _brute_force(keys, q, 50)
    np.testing.assert_array_equal(i, i_bf)
    np.testing.assert_allclose(d, d_bf, rtol=1e-4, atol=1e-4)
    # k above the datastore size is capped
    assert index.exact_search(keys[:7], q, 50)[0].shape == (n_queries, 7)


def test_sqfp16_from_the_keys_file_equals_flat(tmp_path):
    rng = np.random.default_rng(3)
    keys = rng.normal(size=(700, 8)).astype(np.float16)
    np.save(tmp_path / "k.npy", keys)
    rows = index.NpyRows(tmp_path / "k.npy")
    assert rows.shape == (700, 8)
    np.testing.assert_array_equal(rows[100:250], keys[100:250])
    np.testing.assert_array_equal(rows[[5, 3, 699]], keys[[5, 3, 699]])
    sq = index.build(tmp_path / "k.npy", "SQfp16", chunk=128)
    flat = index.build(keys, "Flat")
    q = rng.normal(size=(6, 8)).astype(np.float32)
    d_sq, i_sq = sq.search(q, 20)
    d_flat, i_flat = flat.search(q, 20)
    np.testing.assert_array_equal(i_sq, i_flat)
    np.testing.assert_allclose(d_sq, d_flat, rtol=1e-5)


def test_each_datastore_gets_exact_or_approximate_by_its_size(tmp_path):
    rng = np.random.default_rng(2)
    small, large = rng.normal(size=(800, 16)).astype(np.float16), rng.normal(size=(3000, 16)).astype(np.float16)
    for name, keys, kind in (("small", small, "exact"), ("large", large, "IVF8,PQ4x4")):
        searcher = index.Searcher.in_memory(keys, SETTINGS)
        assert searcher.kind == kind
        d, i = searcher.search(keys[:20].astype(np.float32), 5)
        assert (i[:, 0] == np.arange(20)).mean() > (0.99 if kind == "exact" else 0.5)  # PQ is approximate


@pytest.mark.parametrize("cap, expected, kind", [(1000, None, "exact"), (1001, None, "IVF8,PQ4x4"),
                                                 (None, 900, "exact"), (None, 5000, "IVF8,PQ4x4"),
                                                 (600, 5000, "exact")])
def test_the_corpus_datastores_index_is_chosen_while_planning_by_its_most_entries(cap, expected, kind):
    """One entry a training token at most: the cap, else the expected size, against exact_max_keys."""
    config = {"knn": SETTINGS, "corpus": {"max_train_tokens": cap, "eval_tokens": {},
                                          "expected_tokens": {"train": expected}}}
    assert index.planned_kind(config) == kind


def test_an_unbounded_datastore_has_no_planned_index_and_says_which_key_to_set():
    config = {"knn": SETTINGS, "corpus": {"max_train_tokens": None, "eval_tokens": {}, "expected_tokens": None}}
    with pytest.raises(index.IndexConfigError, match="corpus.max_train_tokens or corpus.expected_tokens.train"):
        index.planned_kind(config)


def test_a_shards_index_is_a_copy_of_the_trained_index_with_its_keys(tmp_path):
    rng = np.random.default_rng(5)
    keys = rng.normal(size=(3000, 16)).astype(np.float16)
    np.save(tmp_path / "a.npy", keys[:1000])
    np.save(tmp_path / "b.npy", keys[1000:])
    trained = index.write_trained(tmp_path / "trained", [tmp_path / "a.npy", tmp_path / "b.npy"], "IVF8,PQ4x4", 2000)
    assert trained == {"kind": "IVF8,PQ4x4", "keys": 0, "trained_on": 2000, "datastore_keys": 3000, "dim": 16}
    empty = faiss.read_index(str(tmp_path / "trained/index.faiss"))
    assert empty.is_trained and empty.ntotal == 0
    # the sample is drawn over both files: the same as over the whole datastore
    whole = index.build(keys, "IVF8,PQ4x4", train_sample=2000)
    got = index.write_shard(tmp_path / "b", tmp_path / "trained", tmp_path / "b.npy")
    assert got == {"kind": "IVF8,PQ4x4", "keys": 2000, "dim": 16}
    shard = faiss.read_index(str(tmp_path / "b/index.faiss"))
    centroids = [faiss.extract_index_ivf(i).quantizer.reconstruct_n(0, 8) for i in (shard, whole)]
    assert np.asarray(centroids[0]).tobytes() == np.asarray(centroids[1]).tobytes()
    q = keys[1000:1020].astype(np.float32)
    assert (shard.search(q, 1)[1][:, 0] == np.arange(20)).mean() > 0.5  # its own rows, as ids


def test_rerank_gives_exact_distances_of_the_retrieved_ids(tmp_path):
    rng = np.random.default_rng(4)
    keys = rng.normal(size=(3000, 16)).astype(np.float16)
    np.save(tmp_path / "k.npy", keys)
    index.write_trained(tmp_path / "trained", [tmp_path / "k.npy"], SETTINGS["approximate_index"], 2000)
    index.write_shard(tmp_path / "ivf", tmp_path / "trained", tmp_path / "k.npy")
    q = rng.normal(size=(30, 16)).astype(np.float32)
    plain = index.Searcher.open(tmp_path / "ivf", tmp_path / "k.npy", SETTINGS)
    reranked = index.Searcher.open(tmp_path / "ivf", tmp_path / "k.npy", {**SETTINGS, "rerank": True})
    d0, i0 = plain.search(q, 10)
    d1, i1 = reranked.search(q, 10)
    assert (np.sort(i0, axis=1) == np.sort(i1, axis=1)).all()  # the same neighbours...
    exact = ((keys.astype(np.float32)[i1] - q[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(d1, exact, rtol=1e-5, atol=1e-5)  # ...at their exact distances,
    assert (np.diff(d1, axis=1) >= 0).all()  # sorted
    assert not np.allclose(d0, d1)  # which PQ only approximates


def test_bad_factory_is_an_error_naming_the_key():
    with pytest.raises(index.IndexConfigError, match=r"'knn\.approximate_index'.*'IVFx,PQ8'"):
        index.check_factory("IVFx,PQ8", 64, "knn.approximate_index")
    with pytest.raises(index.IndexConfigError, match=r"multiple of the number of subquantizers"):
        index.check_factory("IVF16,PQ64", 32, "knn.approximate_index")
    index.check_factory("IVF16,PQ8", 64, "knn.approximate_index")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "qwen2"])
@pytest.mark.parametrize("key", model.KEY_KINDS)
def test_datastore_and_knnlm_for_every_family(arch, key, tmp_path):
    """For each family and key kind: the stored keys are the model's keys of each context, and a
    query equal to a stored context finds it first (distance 0), so its kNN weight is on its value."""
    from knnlm_limits import knnlm

    lm = model.build_model(90, 2, 32, 2, 32, architecture=arch, tie_word_embeddings=arch != "llama", seed=2).eval()
    ex = from_sequences(np.random.default_rng(5).integers(0, 90, size=(6, 12)))
    datastore.build(lm, ex, tmp_path / "k.npy", tmp_path / "v.npy", key=key)
    keys, values = datastore.load(tmp_path / "k.npy", tmp_path / "v.npy")
    with torch.no_grad():
        expected = model.keys_only(lm, torch.as_tensor(np.stack([ex[i] for i in range(6)]), dtype=torch.long), key)
    np.testing.assert_allclose(keys, expected[:, :-1].reshape(-1, 32).numpy(), atol=1e-2, rtol=1e-2)
    searcher = index.Searcher(np.asarray(keys), "exact")
    found = knnlm.evaluate(lm, searcher, values, ex, k=4, key=key)
    assert (found.dists[:, 0] < 1e-3).all()  # each evaluated context is in the datastore
    assert (found.nbr_values[:, 0] == found.targets).mean() > 0.9  # ties of equal contexts aside
    assert (knnlm.knnlm_logprob(found, 0.5, 1.0) > found.lm_logprob).mean() > 0.9


def test_ivf_pq_indexes_skip_polysemous_training():
    """The factory would train IVF-PQ codes for Hamming filtering no search here uses (8x the
    training time, the same neighbours)."""
    keys = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    built = index.build(keys, "IVF8,PQ4", train_sample=3000)
    assert not faiss.downcast_index(faiss.extract_index_ivf(built)).do_polysemous_training


def test_a_datastore_of_exactly_exact_max_keys_is_searched_exactly():
    assert index.choose(1000, SETTINGS) == "exact" and index.choose(1001, SETTINGS) == "IVF8,PQ4x4"


def test_exact_search_widens_blocks_longer_than_its_widening_rows(tmp_path):
    """A block of more than WIDEN_ROWS keys is widened from float16 in pieces: every key of it
    is searched (brute force over all 40,000 here, in one block and in blocks of 12,345)."""
    rng = np.random.default_rng(4)
    keys = rng.normal(size=(2 * index.WIDEN_ROWS + 7232, 4)).astype(np.float16)
    queries = rng.normal(size=(6, 4)).astype(np.float32)
    wide = keys.astype(np.float64)
    brute = ((wide[None] - queries[:, None].astype(np.float64)) ** 2).sum(-1)
    nearest = np.argsort(brute, axis=1, kind="stable")[:, :5]
    for block_bytes in (len(keys) * 4 * 4, 12_345 * 4 * 4):
        dists, ids = index.exact_search(keys, queries, 5, block_bytes=block_bytes)
        np.testing.assert_allclose(dists, np.take_along_axis(brute, nearest, 1), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.sort(ids, 1), np.sort(nearest, 1))


def test_an_index_is_trained_on_a_seeded_sample_without_repeats(tmp_path):
    """The same keys give the same index, byte for byte (a rerun's neighbours do not move); a
    sample as large as the datastore is the datastore itself, so the coarse centroids are
    those FAISS trains on every key, once each."""
    keys = np.random.default_rng(5).normal(size=(3000, 8)).astype(np.float16)
    a, b = (faiss.serialize_index(index.build(keys, "IVF8,Flat", train_sample=500)) for _ in range(2))
    assert np.array_equal(a, b)
    built = index.build(keys, "IVF8,Flat", train_sample=3000)
    reference = faiss.index_factory(8, "IVF8,Flat")
    reference.train(keys.astype(np.float32))
    centroids = lambda ix: faiss.extract_index_ivf(ix).quantizer.reconstruct_n(0, 8)  # noqa: E731
    np.testing.assert_array_equal(centroids(built), centroids(reference))


def test_npy_rows_reads_slices_and_refuses_other_arrays(tmp_path):
    keys = np.arange(24, dtype=np.float16).reshape(6, 4)
    np.save(tmp_path / "k.npy", keys)
    rows = index.NpyRows(tmp_path / "k.npy")
    np.testing.assert_array_equal(rows[2:5], keys[2:5])
    assert rows[3:3].shape == (0, 4) and rows[5:9].shape == (1, 4)
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(ValueError, match=r"flat\.npy: expected a C-ordered 2-D array, got shape \(5,\)"):
        index.NpyRows(tmp_path / "flat.npy")
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.ones((3, 4))))
    with pytest.raises(ValueError, match="C-ordered"):
        index.NpyRows(tmp_path / "fortran.npy")
