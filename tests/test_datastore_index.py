import faiss
import numpy as np
import pytest
import torch

from knnlm_limits import datastore, index, model
from knnlm_limits.tokens import from_sequences


@pytest.fixture(scope="module")
def tiny():
    lm = model.build_gpt2(80, 2, 32, 2, 32, seed=1).eval()
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


def test_flat_index_equals_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(500, 16)).astype(np.float16)
    built = index.build(keys, "Flat", chunk=64)
    index.write(built, tmp_path / "i.faiss")
    again = index.read(tmp_path / "i.faiss", nprobe=4)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    d, ids = again.search(q, 10)
    exact = ((keys.astype(np.float32)[None] - q[:, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ids, np.argsort(exact, axis=1)[:, :10])
    np.testing.assert_allclose(d, np.sort(exact, axis=1)[:, :10], rtol=1e-4)


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


def test_ivf_pq_trains_on_a_sample():
    rng = np.random.default_rng(2)
    keys = rng.normal(size=(3000, 16)).astype(np.float16)
    built = index.build(keys, "IVF16,PQ4", train_sample=1000)
    assert built.is_trained and built.ntotal == 3000
    faiss.extract_index_ivf(built).nprobe = 16
    _, ids = built.search(keys[:20].astype(np.float32), 5)
    assert (ids[:, 0] == np.arange(20)).mean() > 0.5  # PQ is approximate
