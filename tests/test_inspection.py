"""Where retrieval helps: per-token gains, frequency buckets and their intervals against
brute-force recomputation."""

import numpy as np
import pandas as pd
import pytest

from knnlm_limits import inspection, knnlm


def _found(rng, n=400, k=8, vocab=50):
    targets = rng.integers(0, vocab, n)
    values = rng.integers(0, vocab, (n, k)).astype(np.int32)
    values[:, 0] = np.where(rng.random(n) < 0.5, targets, values[:, 0])  # half the rows retrieve their target
    return knnlm.SearchResults(targets=targets, lm_logprob=np.log(rng.uniform(0.01, 0.5, n)).astype(np.float32),
                               example=np.zeros(n, np.int64),
                               dists=np.sort(rng.uniform(0, 5, (n, k)), 1).astype(np.float32), nbr_values=values)


def test_per_token_counts_buckets_and_gains_by_brute_force():
    rng = np.random.default_rng(0)
    found = _found(rng)
    train = rng.zipf(1.3, 30_000) % 50  # a skewed training split
    tokens = inspection.per_token(found, train, lam=0.25, temperature=1.0)
    for i in rng.choice(len(tokens), 20, replace=False):
        count = int(sum(1 for t in train if t == found.targets[i]))
        assert tokens.train_count[i] == count
        low, high = next(b for b in inspection.BUCKETS if b[0] <= count and (b[1] is None or count < b[1]))
        assert tokens.bucket[i] == inspection.bucket_label(low, high)
    expected = knnlm.knnlm_logprob(found, 0.25, 1.0) - found.lm_logprob.astype(np.float64)
    np.testing.assert_allclose(tokens.gain, expected, atol=1e-12)


def test_a_buckets_mean_and_interval_recomputed_from_the_per_token_csv(tmp_path):
    rng = np.random.default_rng(1)
    tokens = inspection.per_token(_found(rng, n=600), rng.zipf(1.2, 50_000) % 50, lam=0.3, temperature=2.0)
    tokens.to_csv(tmp_path / "gain_tokens.csv", index=False)
    buckets = inspection.by_bucket(tokens, n_resamples=500, seed=3).set_index("bucket")
    table = pd.read_csv(tmp_path / "gain_tokens.csv")
    label = table.bucket.value_counts().index[0]  # the fullest bucket
    gains = table.gain[table.bucket == label].to_numpy()
    # by hand: the mean, and a percentile bootstrap of it drawn from the same seeded stream
    draws = np.random.default_rng(3).integers(0, len(gains), size=(500, len(gains)))
    low, high = np.percentile(gains[draws].mean(axis=1), [2.5, 97.5])
    assert buckets.loc[label, "mean_gain"] == pytest.approx(gains.mean(), rel=1e-12)
    assert (buckets.loc[label, "ci_low"], buckets.loc[label, "ci_high"]) == pytest.approx((low, high), rel=1e-12)
    assert buckets.loc[label, "share"] == pytest.approx(len(gains) / len(table))


def test_rare_minus_frequent_is_the_difference_of_group_means():
    tokens = pd.DataFrame({"train_count": [0, 5, 50, 2000, 5000, 30_000, 500],
                           "gain": [9.0, 1.0, 3.0, 0.5, -0.5, 0.0, 7.0]})
    point, low, high = inspection.rare_minus_frequent(tokens, n_resamples=200)
    assert point == pytest.approx((1.0 + 3.0) / 2 - (0.5 - 0.5 + 0.0) / 3)  # unseen and 100-999 left out
    assert low <= point <= high
    assert np.isnan(inspection.rare_minus_frequent(tokens[tokens.train_count < 100])[0])


# ---------------------------------------------------------------- retrieved neighbours


def _tiny_search(tmp_path, tok, k):
    """A datastore of a short training text under a tiny random LM, searched exactly from a
    test text: (search results, ids, positions, train stream, test examples)."""
    from knnlm_limits import datastore, index, model
    from knnlm_limits.tokens import windows

    train = np.asarray(tok("the cat sat on the mat. the dog sat on the log. " * 6)["input_ids"], np.int32)
    test = windows(np.asarray(tok("the cat sat on the log. the dog sat on the mat.")["input_ids"], np.int32), 8, 4)
    lm = model.build_model(len(tok), 1, 16, 2, 16, seed=0).eval()
    datastore.build(lm, windows(train, 16, 8), tmp_path / "k.npy", tmp_path / "v.npy", tmp_path / "p.npy")
    found = knnlm.evaluate(lm, index.Searcher(tmp_path / "k.npy", "exact"), np.load(tmp_path / "v.npy"), test, k=k,
                           ids_path=tmp_path / "ids.npy")
    return found, np.load(tmp_path / "ids.npy", mmap_mode="r"), np.load(tmp_path / "p.npy", mmap_mode="r"), train, test


def test_neighbours_show_the_training_text_at_each_stored_position(small_tokenizer, tmp_path):
    tok, k, T = small_tokenizer, 6, 3.0
    found, ids, positions, train, test = _tiny_search(tmp_path, tok, k)
    assert (test.tokens[inspection.target_positions(test, found.example)] == found.targets).all()
    settings = {"tokens": 10, "neighbours": k, "context_tokens": 5, "seed": 1}
    decode = lambda t: tok.decode([int(i) for i in t])  # noqa: E731
    table = inspection.neighbours(found, ids, positions, train, test, decode, 0.25, T, settings)
    assert table["rank"].nunique() == 10 and (table.neighbour > 0).all()
    for row in table.itertuples():
        # the text at the entry's stored position, decoded here from the stream by hand
        where = row.train_position
        assert row.neighbour_context == tok.decode(train[max(0, where - 5) : where].tolist())  # the start: fewer
        assert row.next_token == tok.decode([int(train[where])])
        assert row.matches_target == (row.next_token == row.target)
    for _, rows in table.groupby("rank"):
        d = rows.distance.to_numpy(np.float64)
        weights = np.exp(-(d - d.min()) / T) / np.exp(-(d - d.min()) / T).sum()  # all k are listed
        np.testing.assert_allclose(rows.weight, weights, rtol=1e-6, atol=1e-9)
        assert rows.p_knn.iloc[0] == pytest.approx(rows.weight[rows.matches_target].sum(), abs=1e-9)
        mixed = 0.25 * rows.p_knn.iloc[0] + 0.75 * rows.p_lm.iloc[0]
        assert rows.p_knnlm.iloc[0] == pytest.approx(mixed, rel=1e-9)
        assert rows.gain.iloc[0] == pytest.approx(np.log(mixed / rows.p_lm.iloc[0]), rel=1e-6, abs=1e-9)
    gains = table.groupby("rank").gain.first().abs().to_numpy()
    assert (np.diff(gains) <= 0).all()  # largest gains and losses first


def test_neighbours_catch_positions_that_do_not_match_the_values(small_tokenizer, tmp_path):
    found, ids, positions, train, test = _tiny_search(tmp_path, small_tokenizer, 4)
    settings = {"tokens": 3, "neighbours": 4, "context_tokens": 5, "seed": 0}
    with pytest.raises(ValueError, match="position"):
        inspection.neighbours(found, ids, np.asarray(positions) + 1, train, test, str, 0.25, 1.0, settings)
