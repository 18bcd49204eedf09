"""The index module's numeric core against independent truths: FAISS's own sizes of a
factory's index, brute-force distances, closed forms of block sizes, and properties
(ties keep the index's order, a search depends on its float32 queries only)."""

import faiss
import numpy as np
import pytest

from knnlm_limits import index


def _faiss_shape(factory: str, d: int) -> tuple[int, int, int]:
    """(lists, bytes per code, FLOPs of scanning a code) as FAISS builds `factory`: one list
    for a non-IVF index; a PQ code scanned with one addition a sub-quantiser, any other by
    its distance (2 d)."""
    built = faiss.index_factory(d, factory)
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(built))
        nlist, code = ivf.nlist, ivf.code_size
    except RuntimeError:
        ivf = faiss.downcast_index(built)
        nlist, code = 1, built.sa_code_size()
    return nlist, code, ivf.pq.M if hasattr(ivf, "pq") else 2 * d


@pytest.mark.parametrize("factory, d", [
    ("IVF8,PQ4", 16), ("IVF8,PQ4x4", 16), ("PQ4", 16), ("PQ5x4", 20), ("IVF8,PQ5x4", 20), ("PQ3x3", 12),
    ("IVF8,SQ8", 16), ("IVF8,SQfp16", 16), ("SQfp16", 16), ("IVF8,Flat", 16), ("Flat", 16),
    ("IVF64_HNSW8,PQ4", 16), ("IVF64,PQ4np", 16), ("IVF64,PQ4x4fs", 16), ("OPQ4,IVF8,PQ4", 16),
    ("IVF64,PQ16", 128), ("IVF32,PQ8x8", 64), ("IVF16,SQ8", 32), ("IVF16,Flat", 32),
])
def test_ivf_shape_and_scan_flops_are_those_of_the_index_faiss_builds(factory, d):
    """The cost and memory estimates' list count, code bytes and scan FLOPs are FAISS's own."""
    assert (*index.ivf_shape(factory, d), index.code_scan_flops(factory, d)) == _faiss_shape(factory, d)


# ---------------------------------------------------------------- reading the key file


def test_npy_rows_reads_a_version_2_file(tmp_path):
    """A .npy header of format 2.0 (4-byte header length) is read as such, not as 1.0's."""
    keys = np.arange(40, dtype=np.float16).reshape(10, 4)
    with open(tmp_path / "k.npy", "wb") as fh:
        np.lib.format.write_array(fh, keys, version=(2, 0))
    rows = index.NpyRows(tmp_path / "k.npy")
    assert rows.shape == (10, 4)
    np.testing.assert_array_equal(rows[3:7], keys[3:7])
    np.testing.assert_array_equal(rows[[0, 1, 9]], keys[[0, 1, 9]])


def test_npy_rows_reads_rows_whole_when_the_os_returns_short_reads(tmp_path, monkeypatch):
    """A positioned read may return fewer bytes than asked (network file systems): the
    reader goes on from where the short read stopped."""
    keys = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float16)
    np.save(tmp_path / "k.npy", keys)
    preadv = index.os.preadv
    # at most 5 bytes a call: a 16-byte row takes 4 reads, none aligned with a row
    monkeypatch.setattr(index.os, "preadv", lambda fd, bufs, offset: preadv(fd, [bufs[0][:5]], offset))
    wanted = [0, 1, 2, 7, 30, 31, 49]
    np.testing.assert_array_equal(index.NpyRows(tmp_path / "k.npy")[wanted], keys[wanted])


# ---------------------------------------------------------------- building


@pytest.mark.parametrize("factory", ["Flat", "SQfp16"])
def test_an_index_of_no_keys_is_written_and_read_back_empty(factory):
    """Reserving the code buffer leaves no code behind: the index of no keys writes, reads back
    holding none, and finds nothing."""
    empty = index.build(np.zeros((0, 16), np.float16), factory)
    back = faiss.deserialize_index(faiss.serialize_index(empty))
    assert back.ntotal == 0 and back.search(np.zeros((1, 16), np.float32), 1)[1][0, 0] == -1


@pytest.mark.parametrize("factory", ["IVF8,PQ4", "OPQ4,IVF8,PQ4", "PQ4"])
def test_no_pq_index_is_trained_for_polysemous_search(factory):
    """Neither an IVF-PQ (inside a pre-transform too) nor a plain PQ index does polysemous
    training, which only costs time here."""
    built = index.trained(np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32), factory, 1000)
    try:
        pq = faiss.downcast_index(faiss.extract_index_ivf(built))
    except RuntimeError:
        pq = faiss.downcast_index(built)
    assert not pq.do_polysemous_training


# ---------------------------------------------------------------- searching


def _brute(keys, queries):
    """Squared L2 from each query to every key, in float64 from the stored (float16) keys."""
    return ((queries.astype(np.float64)[:, None] - keys.astype(np.float64)[None]) ** 2).sum(-1)


@pytest.fixture(scope="module")
def keys16():
    return np.random.default_rng(7).normal(size=(3000, 8)).astype(np.float16)


def test_an_exact_block_is_block_bytes_of_float32_rows_at_least_k_at_most_all():
    """The exact search's block (and the memory estimate's): block_bytes / (4 d) rows."""
    assert index.exact_block_rows(10_000, 5, 16, block_bytes=700 * 16 * 4) == 700
    assert index.exact_block_rows(10_000, 900, 16, block_bytes=700 * 16 * 4) == 900
    assert index.exact_block_rows(300, 5, 16, block_bytes=700 * 16 * 4) == 300


@pytest.mark.parametrize("from_file", [False, True])
def test_a_missing_neighbour_is_at_infinite_distance_even_in_a_one_key_datastore(tmp_path, from_file):
    """An id of -1 (an IVF search that found too few keys) is at distance inf; it reads no
    row (a one-key shard has no row 1)."""
    key = np.array([[1, 2, 3, 4]], np.float16)
    np.save(tmp_path / "k.npy", key)
    queries = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    got = index.exact_distances(tmp_path / "k.npy" if from_file else key, queries, np.array([[0, -1], [-1, 0]]))
    # by hand: |(1,2,3,4)|^2 = 30, |(0,1,2,3)|^2 = 14 (exact in float32)
    np.testing.assert_array_equal(got, [[30, np.inf], [np.inf, 14]])


def test_exact_distances_of_float64_queries_are_float64_distances_rounded_once(keys16):
    """Differences and sums in float64, rounded to the float32 answer once: equal to the brute
    force rounded to float32. A float64 rounding (~1e-16) moves that rounding only for a value
    within 1e-16 of a float32 tie (odds ~1e-6 over these 120); float32 arithmetic (several
    roundings of ~6e-8 each) misses it on most of them."""
    queries = np.random.default_rng(8).normal(size=(6, 8))
    ids = np.random.default_rng(9).integers(0, len(keys16), size=(6, 20))
    got = index.exact_distances(keys16, queries, ids)
    np.testing.assert_array_equal(got, np.take_along_axis(_brute(keys16, queries), ids, 1).astype(np.float32))


def test_exact_distances_of_float16_queries_are_computed_in_float32(keys16):
    """float16 queries are widened: float32 arithmetic is within ~1e-7 relative of the brute
    force; rtol 1e-6 lets through no float16 arithmetic (~1e-3)."""
    queries = np.random.default_rng(8).normal(size=(6, 8)).astype(np.float16)
    ids = np.random.default_rng(9).integers(0, len(keys16), size=(6, 20))
    got = index.exact_distances(keys16, queries, ids)
    np.testing.assert_allclose(got, np.take_along_axis(_brute(keys16, queries), ids, 1), rtol=1e-6)


def _tied(n_groups=4, copies=16, d=4):
    """Keys of `n_groups` distinct integer vectors, each stored `copies` times (repeated contexts),
    a query whose distances to them are distinct integers (exact in float32), and retrieved ids:
    every key, shuffled (the order an index gives them)."""
    base = np.arange(n_groups * d, dtype=np.float16).reshape(n_groups, d) % 5
    keys = np.repeat(base, copies, axis=0)
    query = np.zeros((1, d), np.float32)
    ids = np.random.default_rng(0).permutation(len(keys))[None]
    return keys, query, ids


def _stable_order(keys, query, ids):
    """ids sorted by exact distance, ties kept in their retrieved order (by hand, in float64)."""
    dist = _brute(keys, query)[0]
    return np.array([sorted(ids[0], key=lambda i: (dist[i], list(ids[0]).index(i)))])


def test_rerank_keeps_the_retrieved_order_among_keys_at_equal_distance():
    """Equal keys (a repeated context) are at equal exact distance: re-ranking sorts them
    stably, so a rerun and every platform give the same neighbour ids in the same order."""
    keys, query, ids = _tied()
    dists, got = index.rerank(keys, query, np.zeros(ids.shape, np.float32), ids)
    np.testing.assert_array_equal(got, _stable_order(keys, query, ids))
    np.testing.assert_array_equal(dists[0], np.sort(_brute(keys, query)[0]))


def test_a_reranking_searcher_keeps_the_indexs_order_among_keys_at_equal_distance(monkeypatch):
    keys, query, ids = _tied()
    searcher = index.Searcher(keys, "IVF1,Flat", rerank_exact=True)
    exact = index.exact_distances(keys, query, ids)
    monkeypatch.setattr(searcher, "candidates", lambda q, k: (exact, ids, exact))  # an index's answer
    dists, got = searcher.search(query, ids.shape[1])
    np.testing.assert_array_equal(got, _stable_order(keys, query, ids))


def _assert_nearest(keys, queries, ids, k):
    """ids are each query's k nearest keys: their brute-force distances are the k smallest.
    Compared by distance, not id, so that two keys within float32 rounding of each other may
    come in either order; rtol 1e-5 sits ~100x above float32 rounding and ~10x below the
    smallest gap between consecutive neighbours of these queries (1.2e-4 relative), so it lets
    through no key that is not among the nearest."""
    brute = _brute(keys, queries)
    assert ids.shape == (len(queries), k) and (ids >= 0).all()
    np.testing.assert_allclose(np.take_along_axis(brute, ids, 1), np.sort(brute, axis=1)[:, :k], rtol=1e-5)


def test_an_exact_faiss_index_of_a_shard_is_searched_exactly_and_never_reranked(tmp_path, keys16):
    """SQfp16 (exact over float16 keys) through the index stage's two jobs: the shard's
    search is the brute force's, and knn.rerank leaves it alone (its distances are exact)."""
    np.save(tmp_path / "k.npy", keys16[:1000])
    index.write_trained(tmp_path / "trained", [tmp_path / "k.npy"], "SQfp16", 500)
    assert index.write_shard(tmp_path / "shard", tmp_path / "trained", tmp_path / "k.npy", chunk=300)["keys"] == 1000
    searcher = index.Searcher.open(tmp_path / "shard", tmp_path / "k.npy", {"nprobe": 4, "rerank": True})
    queries = np.random.default_rng(10).normal(size=(12, 8)).astype(np.float32)
    assert searcher.candidates(queries, 5)[2] is None
    dists, ids = searcher.search(queries, 5)
    _assert_nearest(keys16[:1000], queries, ids, 5)
    np.testing.assert_allclose(dists, np.take_along_axis(_brute(keys16, queries), ids, 1), rtol=1e-5)


def test_a_shard_with_no_index_is_searched_exactly_and_says_so(tmp_path, keys16):
    """Its kind names the search in the memory findings (their search FLOPs and 'search' column)."""
    np.save(tmp_path / "k.npy", keys16[:500])
    searcher = index.Searcher.of_shard(tmp_path / "k.npy", None, {"threads": 2})
    assert searcher.kind == index.EXACT
    queries = np.random.default_rng(16).normal(size=(12, 8)).astype(np.float32)
    _assert_nearest(keys16[:500], queries, searcher.search(queries, 5)[1], 5)


@pytest.fixture
def ivf_flat(keys16):
    """IVF8,Flat over keys16: with all 8 lists probed, an exact search. Built for each test: a
    Searcher sets its index's nprobe, and mutmut credits a shared fixture's build to one test."""
    return index.build(keys16, "IVF8,Flat", train_sample=1000)


def test_a_searcher_given_no_nprobe_probes_as_its_index_does(keys16, ivf_flat):
    exhaustive = faiss.clone_index(ivf_flat)
    faiss.extract_index_ivf(exhaustive).nprobe = 8
    queries = np.random.default_rng(11).normal(size=(40, 8)).astype(np.float32)
    dists, ids = index.Searcher(keys16, "IVF8,Flat", exhaustive).search(queries, 3)
    _assert_nearest(keys16, queries, ids, 3)


def test_an_in_memory_searcher_takes_nprobe_and_the_training_sample_from_the_settings(keys16):
    settings = {"exact_max_keys": 100, "exact_index": "exact", "approximate_index": "IVF8,Flat",
                "index_train_sample": 500, "nprobe": 8, "rerank": False}
    searcher = index.Searcher.in_memory(keys16, settings)
    # trained on the seeded sample of 500 keys, not on all 3000
    centroids = lambda ix: faiss.extract_index_ivf(ix).quantizer.reconstruct_n(0, 8)  # noqa: E731
    np.testing.assert_array_equal(centroids(searcher.index), centroids(index.trained(keys16, "IVF8,Flat", 500)))
    # all 8 lists probed: exact (one list would miss neighbours across a list's border)
    queries = np.random.default_rng(12).normal(size=(40, 8)).astype(np.float32)
    _assert_nearest(keys16, queries, searcher.search(queries, 3)[1], 3)


def test_a_search_depends_only_on_its_queries_in_float32(keys16, ivf_flat):
    """float64 queries are searched as their float32 values, re-ranking included: the same
    answer, bit for bit (the same arithmetic on the same inputs)."""
    searcher = index.Searcher(keys16, "IVF8,Flat", ivf_flat, nprobe=2, rerank_exact=True)
    queries = np.random.default_rng(13).normal(size=(30, 8))
    for got, want in zip(searcher.search(queries, 6), searcher.search(queries.astype(np.float32), 6)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- the GPU search, with CPU stand-ins


@pytest.fixture
def fake_gpu(monkeypatch):
    """FAISS-GPU's objects stood in by CPU ones that check their arguments as FAISS-GPU does
    (resources of the right type, a device this machine has); GPU 0 with `free` bytes free."""
    import sys
    import types

    import torch

    made = []

    class StandardGpuResources:
        def __init__(self):
            made.append(self)

    def resources_of(res):
        if not isinstance(res, StandardGpuResources):
            raise TypeError("in method 'GpuIndexFlatL2', argument 2 of type 'faiss::gpu::GpuResourcesProvider *'")

    def gpu_flat(res, d):
        resources_of(res)
        return faiss.IndexFlatL2(d)

    def cpu_to_gpu(res, device, cpu_index):
        resources_of(res)
        if device not in range(faiss.get_num_gpus()):
            raise RuntimeError(f"invalid device {device}")
        moved = faiss.clone_index(cpu_index)
        try:
            faiss.extract_index_ivf(moved).nprobe = 1  # a GPU copy starts at FAISS's default
        except RuntimeError:
            pass
        return moved

    monkeypatch.setattr(faiss, "StandardGpuResources", StandardGpuResources, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexFlatL2", gpu_flat, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setitem(sys.modules, "faiss.contrib.torch_utils", types.ModuleType("torch_utils"))  # no patching
    free = {"bytes": 2**40}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free["bytes"], 2 * free["bytes"]))
    return types.SimpleNamespace(made=made, free=free)


def test_the_gpu_search_gives_faiss_gpu_its_resources_and_gpu_0(fake_gpu, keys16, ivf_flat):
    """Exact keys in a flat GPU index, an IVF index moved to GPU 0 with its nprobe (8 of 8
    lists: exact), each built with the search's resources (test_memory checks the answers
    against the CPU searcher's; here the stand-ins refuse what FAISS-GPU would)."""
    queries = np.random.default_rng(14).normal(size=(40, 8)).astype(np.float32)
    for searcher in (index.Searcher(keys16, "exact"),
                     index.Searcher(keys16, "IVF8,Flat", faiss.clone_index(ivf_flat), nprobe=8)):
        search, why = index.gpu_search(searcher, 4)
        assert why is None
        _assert_nearest(keys16, queries, search(queries)[1], 4)


def test_the_gpu_search_keeps_its_gpu_resources_alive(fake_gpu, keys16):
    """FAISS frees a GPU index's memory with its resources: the search holds them."""
    import gc
    import weakref

    search, _ = index.gpu_search(index.Searcher(keys16[:100], "exact"), 4)
    held = weakref.ref(fake_gpu.made[0])
    fake_gpu.made.clear()
    gc.collect()
    assert held() is not None
    del search
    gc.collect()
    assert held() is None


def test_exact_keys_go_on_the_gpu_while_their_float32_copy_fits_half_its_free_memory(fake_gpu, keys16):
    keys = keys16[:100]  # 100 x 8 float32: 3,200 bytes
    searcher = index.Searcher(keys, "exact")
    fake_gpu.free["bytes"] = 6_400  # exactly twice
    assert index.gpu_search(searcher, 4)[1] is None
    fake_gpu.free["bytes"] = 6_399
    assert index.gpu_search(searcher, 4) == (None, "its 0.0 GiB of float32 keys do not fit half the GPU's free 0.0 GiB")


def test_keys_too_big_for_the_gpu_are_said_so_in_gib(fake_gpu):
    keys = np.broadcast_to(np.float16(0), (2**27, 1))  # 0.5 GiB as float32, no memory here
    fake_gpu.free["bytes"] = 2**30 - 2
    assert index.gpu_search(index.Searcher(keys, "exact"), 4) == (
        None, "its 0.5 GiB of float32 keys do not fit half the GPU's free 1.0 GiB")
