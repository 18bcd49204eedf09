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
