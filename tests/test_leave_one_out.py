"""knnlm.leave_one_out through an approximate (IVF) index: the memory's kNN targets when the
search may not return the entry itself, or returns fewer neighbours than asked.

The exact-search test (test_memory) always finds the entry first, at distance 0, so the
branch that drops the farthest neighbour instead is reached only here. The truth is the
index's own k + 1 neighbours of each entry, read here one search at a time: the entry left
out where it is among them, else the farthest; softmax(-d / T) over the rest."""

import numpy as np
import pytest

from knnlm_limits import knnlm
from knnlm_limits.index import Searcher


def _searcher(keys, factory, nprobe):
    return Searcher.in_memory(keys, {"exact_index": "exact", "exact_max_keys": 10, "approximate_index": factory,
                                     "index_train_sample": len(keys), "nprobe": nprobe, "rerank": False})


def _by_hand(searcher, keys, values, row, k, temperature):
    """(neighbour values, weights) of one entry: its k + 1 nearest by the index, the entry or
    else the farthest left out, the others' softmax(-d / T) (0 and -1 where none was found)."""
    dists, ids = searcher.search(keys[row : row + 1].astype(np.float32), k + 1)
    dists, ids = dists[0].astype(np.float64), ids[0]
    drop = int(np.flatnonzero(ids == row)[0]) if (ids == row).any() else len(ids) - 1
    keep = np.delete(np.arange(len(ids)), drop)[:k]
    dists, ids = dists[keep], ids[keep]
    found = ids >= 0
    weights = np.zeros(len(ids))
    weights[found] = np.exp(-(dists[found] - dists[found].min()) / temperature)
    weights /= weights.sum()
    return np.where(found, values[np.maximum(ids, 0)], -1), weights


def _distribution(vals, weights, vocab):
    out = np.zeros(vocab)
    np.add.at(out, vals[vals >= 0], weights[vals >= 0])
    return out


@pytest.mark.parametrize("factory, nprobe, k, reached", [
    # 4 PQ codes in lists of ~37 keys: ~9 keys of the probed list share each code, at one
    # distance, and the entry is often not among the k + 1 returned (30 of the 86 here): the
    # branch that drops the farthest
    ("IVF16,PQ1x2", 1, 5, "entry not returned"),
    # the same with k = 20 (4 lists of ~150 keys, 37 of 86 entries not returned): past 16
    # neighbours a sort that is not stable no longer keeps the search's order, and would drop
    # some other neighbour than the farthest
    ("IVF4,PQ1x2", 1, 20, "entry not returned"),
    # lists of ~19 keys, one probed, 41 asked: the search pads with -1 (no neighbour)
    ("IVF32,Flat", 1, 40, "fewer than k + 1 found"),
])
def test_leave_one_out_through_an_ivf_index(factory, nprobe, k, reached):
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((600, 16)).astype(np.float16)
    values = rng.integers(0, 9, 600).astype(np.int32)
    searcher = _searcher(keys, factory, nprobe)
    rows = np.arange(0, 600, 7)
    temperature = 2.0
    parts = list(knnlm.leave_one_out(searcher, keys, values, rows, k, temperature, batch=32))
    assert [p[0] for p in parts] == [slice(0, 32), slice(32, 64), slice(64, len(rows))]
    got_values, got_weights = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
    assert got_values.shape == got_weights.shape == (len(rows), k)
    missing_own = padded = 0
    for i, row in enumerate(rows):
        want_values, want_weights = _by_hand(searcher, keys, values, row, k, temperature)
        _, ids = searcher.search(keys[row : row + 1].astype(np.float32), k + 1)
        missing_own += not (ids == row).any()
        padded += (ids < 0).any()
        np.testing.assert_array_equal(np.sort(got_values[i]), np.sort(want_values))
        np.testing.assert_allclose(_distribution(got_values[i], got_weights[i], 9),
                                   _distribution(want_values, want_weights, 9), rtol=1e-9, atol=1e-12)
        assert got_weights[i][got_values[i] < 0].sum() == 0
    if reached == "entry not returned":
        assert 0 < missing_own < len(rows)  # both branches, in one batch
    else:
        assert padded > 0 and missing_own == 0
