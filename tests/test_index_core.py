"""The index module's numeric core against independent truths: FAISS's own sizes of a
factory's index, brute-force distances, closed forms of block sizes, and properties
(ties keep the index's order, a search depends on its float32 queries only)."""

import faiss
import numpy as np
import pytest

from knnlm_limits import index


def _faiss_shape(factory: str, d: int) -> tuple[int, int]:
    """(lists, bytes per code) as FAISS builds `factory`: one list for a non-IVF index."""
    built = faiss.index_factory(d, factory)
    try:
        ivf = faiss.extract_index_ivf(built)
        return ivf.nlist, ivf.code_size
    except RuntimeError:
        return 1, built.sa_code_size()


@pytest.mark.parametrize("factory, d", [
    ("IVF8,PQ4", 16), ("IVF8,PQ4x4", 16), ("PQ4", 16), ("PQ5x4", 20), ("IVF8,PQ5x4", 20),
    ("IVF8,SQ8", 16), ("IVF8,SQfp16", 16), ("SQfp16", 16), ("IVF8,Flat", 16), ("Flat", 16),
    ("IVF64_HNSW8,PQ4", 16), ("IVF64,PQ4np", 16), ("IVF64,PQ4x4fs", 16), ("OPQ4,IVF8,PQ4", 16),
])
def test_ivf_shape_is_the_lists_and_code_size_faiss_builds(factory, d):
    """The cost and memory estimates' list count and code bytes are FAISS's own."""
    assert index.ivf_shape(factory, d) == _faiss_shape(factory, d)


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
