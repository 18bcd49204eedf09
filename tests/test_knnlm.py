"""kNN-LM against a brute-force NumPy reference (exact distances, explicit sums)."""

import faiss
import numpy as np
import pytest
import torch

from knnlm_limits import knnlm

V, D, N, Q, K = 7, 8, 300, 25, 40


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(N, D)).astype(np.float32)
    values = rng.integers(0, V, size=N).astype(np.int32)  # many repeated values
    queries = rng.normal(size=(Q, D)).astype(np.float32)
    targets = rng.integers(0, V, size=Q)
    lm_logp = torch.log_softmax(torch.from_numpy(rng.normal(size=(Q, V))), -1).numpy()
    index = faiss.IndexFlatL2(D)
    index.add(keys)
    dists, ids = index.search(queries, K)
    return keys, values, queries, targets, lm_logp, dists, knnlm.neighbour_values(values, ids)


def brute_force_knn(keys, values, queries, T):
    """p_knn over the vocabulary with explicit loops."""
    out = np.zeros((len(queries), V))
    for q, query in enumerate(queries):
        d = ((keys - query) ** 2).sum(1).astype(np.float64)
        nearest = np.argsort(d)[:K]
        weights = np.exp(-(d[nearest] - d[nearest].min()) / T)
        for i, w in zip(nearest, weights):
            out[q, values[i]] += w
        out[q] /= weights.sum()
    return out


@pytest.mark.parametrize("T", [1.0, 5.0])
@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0])
def test_matches_brute_force(setup, T, lam):
    keys, values, queries, targets, lm_logp, dists, nvalues = setup
    p_knn = brute_force_knn(keys, values, queries, T)
    p = lam * p_knn + (1 - lam) * np.exp(lm_logp)
    with np.errstate(divide="ignore"):
        expected = np.log(p[np.arange(Q), targets])
    found = knnlm.SearchResults(targets, lm_logp[np.arange(Q), targets], np.zeros(Q, np.int64), dists, nvalues)
    got = knnlm.knnlm_logprob(found, lam, T)
    finite = np.isfinite(expected)
    assert (np.isfinite(got) == finite).all()
    np.testing.assert_allclose(got[finite], expected[finite], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(knnlm.knn_distribution(dists, nvalues, T, V), p_knn, atol=1e-5)


def test_lambda_zero_is_lm_and_one_is_knn(setup):
    _, _, _, targets, lm_logp, dists, nvalues = setup
    with np.errstate(divide="ignore"):
        knn = np.log(knnlm.knn_distribution(dists, nvalues, 1.0, V))
    np.testing.assert_allclose(knnlm.interpolate(lm_logp, knn, 0.0), lm_logp)
    np.testing.assert_allclose(knnlm.interpolate(lm_logp, knn, 1.0), knn)
    torch.testing.assert_close(knnlm.interpolate(torch.from_numpy(lm_logp), torch.from_numpy(knn), 0.3),
                               torch.from_numpy(knnlm.interpolate(lm_logp, knn, 0.3)))
    np.testing.assert_allclose(knnlm.knn_target_logprob(dists, nvalues, targets, 1.0), knn[np.arange(Q), targets], atol=1e-6)


def test_missing_neighbours_carry_no_weight():
    nv = knnlm.neighbour_values(np.array([4, 5]), np.array([[1, -1]]))
    assert nv.tolist() == [[5, -1]]
    assert knnlm.knn_target_logprob(np.array([[0.0, 0.0]]), nv, np.array([5]), 1.0)[0] == pytest.approx(0.0)
    # a row with no neighbour at all carries no kNN evidence: the kNN-LM is (1 - lambda) p_lm
    none = knnlm.SearchResults(np.array([3]), np.log([0.5]), np.array([0]), np.zeros((1, 2)), np.full((1, 2), -1))
    assert knnlm.knnlm_logprob(none, 0.25, 1.0)[0] == pytest.approx(np.log(0.75 * 0.5))
    # and the whole distribution agrees: zero, not NaN
    assert knnlm.knn_distribution(np.full((1, 2), np.inf), np.full((1, 2), -1), 1.0, 4).tolist() == [[0.0] * 4]


def test_perplexity_by_hand():
    logp = np.log([0.5, 0.25, 0.125])
    assert knnlm.perplexity(logp) == pytest.approx((0.5 * 0.25 * 0.125) ** (-1 / 3))
    assert knnlm.perplexity(np.log([0.1] * 4)) == pytest.approx(10.0)


def test_grid_contains_fixed_setting(setup):
    _, _, _, targets, lm_logp, dists, nvalues = setup
    found = knnlm.SearchResults(targets, lm_logp[np.arange(Q), targets], np.zeros(Q, np.int64), dists, nvalues)
    grid = knnlm.grid(found, [0.0, 0.25], [1.0, 2.0])
    assert len(grid) == 4
    at = grid[(grid["lambda"] == 0.25) & (grid.temperature == 1.0)].perplexity.item()
    assert at == pytest.approx(knnlm.perplexity(knnlm.knnlm_logprob(found, 0.25, 1.0)))
    assert grid[grid["lambda"] == 0.0].perplexity.nunique() == 1


def test_search_results_load_without_neighbours(tmp_path):
    """neighbours=False gives the per-position arrays as stored and leaves the (N, k) ones out."""
    rng = np.random.default_rng(0)
    found = knnlm.SearchResults(rng.integers(0, 9, 6), rng.normal(size=6).astype(np.float32), np.arange(6),
                                rng.random((6, 4)).astype(np.float32), rng.integers(-1, 9, (6, 4)).astype(np.int32),
                                rng.normal(size=6))
    found.save(tmp_path / "found.npz")
    whole = knnlm.SearchResults.load(tmp_path / "found.npz")
    light = knnlm.SearchResults.load(tmp_path / "found.npz", neighbours=False)
    assert whole.has_neighbours and not light.has_neighbours and light.nbr_values is None
    for name in ("targets", "lm_logprob", "example", "memory_logprob"):
        np.testing.assert_array_equal(getattr(light, name), getattr(found, name))
