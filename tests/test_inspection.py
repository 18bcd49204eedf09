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


# ---------------------------------------------------------------- fidelity of approximate search


def test_fidelity_compares_the_index_with_brute_force(tmp_path):
    from knnlm_limits import findings, index

    rng = np.random.default_rng(0)
    keys = rng.normal(size=(3000, 16)).astype(np.float16)
    np.save(tmp_path / "k.npy", keys)
    values = rng.integers(0, 20, 3000).astype(np.int32)
    settings = {"exact_max_keys": 100, "exact_index": "exact", "approximate_index": "IVF16,Flat",
                "index_train_sample": 3000, "nprobe": 2, "rerank": False}
    index.write_trained(tmp_path / "trained", [tmp_path / "k.npy"], settings["approximate_index"], 3000)
    index.write_shard(tmp_path / "ivf", tmp_path / "trained", tmp_path / "k.npy")
    searcher = index.Searcher.open(tmp_path / "ivf", tmp_path / "k.npy", settings)
    queries = rng.normal(size=(300, 16)).astype(np.float32)
    k = 10
    dists, ids = searcher.search(queries, k)
    targets = rng.integers(0, 20, 300)
    found = knnlm.SearchResults(targets, np.log(rng.uniform(0.01, 0.3, 300)).astype(np.float32),
                                np.zeros(300, np.int64), dists, knnlm.neighbour_values(values, ids))
    # the sample's exact neighbours, as the shards' search jobs answer them and the merge joins them
    from knnlm_limits import shards

    rows = inspection.fidelity_rows(len(queries), 50)
    assert len(rows) == 50 == len(np.unique(rows))
    answer = shards.answer(index.Searcher(tmp_path / "k.npy", "exact"), values, queries[rows], k, 0)
    exact = shards.merge_sample([answer], rows, k)
    table = inspection.fidelity(found, ids, exact, 0.25, 1.0)
    # by brute force: the true k nearest of each sampled query, and the share the index found
    rows = exact["rows"]
    true = np.argsort(((keys.astype(np.float32)[None] - queries[rows][:, None]) ** 2).sum(-1), axis=1)[:, :k]
    recall = [len(set(true[i]) & set(ids[r][ids[r] >= 0])) / k for i, r in enumerate(rows)]
    np.testing.assert_allclose(table.recall_at_k, recall)
    assert 0 < table.recall_at_k.mean() < 1  # two of 16 lists probed: some neighbours missed
    exactly = knnlm.SearchResults(targets[rows], found.lm_logprob[rows], found.example[rows], exact["dists"],
                                  values[true])
    np.testing.assert_allclose(table.knnlm_logprob_exact, knnlm.knnlm_logprob(exactly, 0.25, 1.0), rtol=1e-5)
    point, low, high = inspection.approximate_minus_exact(table, 500, 0)
    expected = np.exp(-table.knnlm_logprob_approximate.mean()) - np.exp(-table.knnlm_logprob_exact.mean())
    assert point == pytest.approx(expected, rel=1e-9) and low <= point <= high
    row = findings.search_fidelity((point, low, high), table, {"model": "m"})[0]
    assert row["holds"] == (high < 0) and "recall@k" in row["note"]
    # no sample (an exact search: knn.fidelity_queries is not used), no finding
    assert len(inspection.fidelity_rows(len(queries), 0)) == 0
    assert findings.search_fidelity((np.nan,) * 3, table.iloc[:0], {}) == []
