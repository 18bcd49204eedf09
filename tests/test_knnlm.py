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


def test_far_neighbours_keep_their_weights():
    """Squared distances of wide keys run to the thousands: at T = 1, exp(-d) underflows to 0
    for every neighbour, and p_knn must still be the softmax of -d / T (shifted by its max,
    as the brute force here is). Computed without the shift, every row is 0/0."""
    rng = np.random.default_rng(3)
    dists = np.sort(rng.uniform(800.0, 3000.0, (20, 6)), 1).astype(np.float32)
    nvalues = rng.integers(0, V, (20, 6)).astype(np.int32)
    targets = nvalues[:, 2].astype(np.int64)
    d = dists.astype(np.float64)
    weights = np.exp(-(d - d[:, :1]))
    weights /= weights.sum(1, keepdims=True)
    np.testing.assert_allclose(knnlm.neighbour_weights(dists, nvalues, 1.0), weights, rtol=1e-12, atol=1e-300)
    log_weights = -(d - d[:, :1]) - np.log(np.exp(-(d - d[:, :1])).sum(1, keepdims=True))  # the nearest's term is 1
    expected = [np.logaddexp.reduce(log_weights[i][nvalues[i] == targets[i]]) for i in range(20)]
    np.testing.assert_allclose(knnlm.knn_target_logprob(dists, nvalues, targets, 1.0), expected, rtol=1e-12, atol=1e-12)
    p = knnlm.knn_distribution(dists, nvalues, 1.0, V)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)


def test_sample_rows_is_seeded_uniform_and_without_replacement():
    assert knnlm.sample_rows(5, 5, 0).tolist() == knnlm.sample_rows(5, 9, 1).tolist() == [0, 1, 2, 3, 4]
    a, b, c = knnlm.sample_rows(1000, 50, 7), knnlm.sample_rows(1000, 50, 7), knnlm.sample_rows(1000, 50, 8)
    np.testing.assert_array_equal(a, b)  # the same seed, the same rows (a rerun's numbers do not move)
    assert not np.array_equal(a, c)
    assert len(np.unique(a)) == 50 and (np.diff(a) > 0).all() and a.max() > 500  # drawn over all rows, in order


def test_search_results_refuse_a_file_that_is_not_one(tmp_path):
    np.savez(tmp_path / "other.npz", targets=np.arange(3), lm_logprob=np.zeros(3), example=np.zeros(3), keys=np.zeros(3))
    with pytest.raises(ValueError, match=r"other\.npz: not search results \(unexpected arrays \['keys'\]\)"):
        knnlm.SearchResults.load(tmp_path / "other.npz")


@pytest.mark.parametrize("n_rows, k", [(10, 4), (100_000, 1024), (2_000_000, 1), (5, 2_000_000)])
def test_row_chunks_partition_the_rows_within_the_memory_budget(n_rows, k):
    """Chunks are consecutive, disjoint and cover every row once; each is the most rows whose
    TEMPORARIES (rows, k) float64 arrays fit CHUNK_BYTES, and one row where even one does not."""
    chunks = list(knnlm._row_chunks(n_rows, k))
    assert chunks[0].start == 0 and chunks[-1].stop == n_rows
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    rows = chunks[0].stop - chunks[0].start
    budget = lambda r: r * k * 8 * knnlm.TEMPORARIES <= knnlm.CHUNK_BYTES  # noqa: E731
    assert (rows == 1 and not budget(1)) or (budget(rows) and (rows == n_rows or not budget(rows + 1)))
    assert [(c.start, c.stop) for c in knnlm._row_chunks(10, k, chunk_rows=3)] == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_tuned_setting_is_the_grids_lowest_perplexity_ties_to_the_smaller_setting():
    import pandas as pd

    grid = pd.DataFrame({"lambda": [0.1, 0.25, 0.5, 0.25, 0.1, 0.5], "temperature": [1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
                         "perplexity": [30.0, 21.5, 22.0, 21.0, 25.0, 21.0]})
    assert knnlm.tuned_setting(grid) == (0.25, 2.0)  # 21.0 twice: the smaller lambda
    grid.loc[3, "perplexity"] = 21.2
    assert knnlm.tuned_setting(grid) == (0.5, 2.0)
    grid.loc[2, "perplexity"] = 21.0
    assert knnlm.tuned_setting(grid) == (0.5, 1.0)  # the same lambda: the smaller temperature
    assert all(isinstance(v, float) for v in knnlm.tuned_setting(grid))


def test_perplexity_of_float32_log_probs_is_taken_in_float64():
    """The LM's stored log-probs are float32: their mean is taken in float64 (a float32 mean of
    100,000 of them is 7.5e-9 off, relative: small, but not the same number)."""
    logp = np.log(np.random.default_rng(0).uniform(0.01, 1.0, 100_000)).astype(np.float32)
    assert knnlm.perplexity(logp) == knnlm.perplexity(logp.astype(np.float64))


def test_lm_and_queries_gives_float32_keys_and_refuses_examples_longer_than_the_context():
    from knnlm_limits import model
    from knnlm_limits.tokens import from_sequences

    lm = model.build_model(30, 1, 16, 2, 8, seed=0)
    found, queries = knnlm.lm_and_queries(lm, from_sequences([[1, 2, 3, 4], [5, 6, 7]]))
    assert queries.dtype == np.float32 and queries.shape == (len(found), 16) == (5, 16)
    _, none = knnlm.lm_and_queries(lm, from_sequences([[1, 2, 3, 4]], score_start=[4]))
    assert none.dtype == np.float32 and none.shape == (0, 16)
    with pytest.raises(ValueError, match="evaluation examples: an example has 9 tokens but the model's context holds 8"):
        knnlm.lm_and_queries(lm, from_sequences([list(range(9))]))
