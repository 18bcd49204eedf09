"""Every stage's memory bounded by its batch: the streamed, chunked and batched code
gives exactly (bit for bit) what the whole-data code it replaced gave. Each `_old_*`
function below is that replaced code, kept here as the reference."""

import shutil

import faiss
import numpy as np
import pytest
import torch

from knnlm_limits import corpus, datastore, disk, index, knnlm, model, tokenizer
from knnlm_limits.tokens import Examples, batches_by_tokens, pad_batch, scored_mask, windows

# ---------------------------------------------------------------- tokenizing


def _old_tokenize_split(tok, text_path, max_tokens=None):
    lines = open(text_path, encoding="utf-8").read().splitlines(keepends=True)
    ids = tok(list(lines), add_special_tokens=False)["input_ids"]
    return np.asarray([t for seq in ids for t in seq], dtype=np.int32)[:max_tokens]


def _old_encode_lines(tok, lines, add_eos_between=False):
    ids = tok(list(lines), add_special_tokens=False)["input_ids"]
    if add_eos_between:
        ids = [seq + [tok.eos_token_id] for seq in ids]
    return np.asarray([t for seq in ids for t in seq], dtype=np.int32)


def _long_lines_text():
    """Lines far longer than a chunk, short ones, blank ones, and every line break
    str.splitlines knows besides '\\n' (universal newlines turn '\\r' and '\\r\\n' into '\\n')."""
    rng = np.random.default_rng(7)
    words = "".join(corpus.synthetic_lines(200, seed=[8, 8])).split()
    long = [" " + " ".join(rng.choice(words, size=n)) + " \n" for n in (3000, 50, 9000)]
    odd = "a\r\nb\rc\x0cd\x0be\x1cf\x1dg\x1eh\x85i\u2028j\u2029k \n"
    return "".join([long[0], " \n", odd, long[1], "\n", long[2], "no newline at the end"])


@pytest.fixture(scope="module")
def tok():
    from tests.support import synthetic_tokenizer

    return synthetic_tokenizer(1000)


@pytest.mark.parametrize("text", ["synthetic", "long_lines"])
@pytest.mark.parametrize("max_tokens", [None, 1, 777, 10**9])
@pytest.mark.parametrize("chunk_chars", [None, 1, 500])
def test_tokenize_split_gives_the_old_token_stream(tok, tmp_path, monkeypatch, text, max_tokens, chunk_chars):
    body = "".join(corpus.synthetic_lines(400, seed=[6, 6])) if text == "synthetic" else _long_lines_text()
    path = tmp_path / "split.txt"
    path.write_bytes(body.encode("utf-8"))  # bytes: '\r' must reach the reader as written
    if chunk_chars:
        monkeypatch.setattr(tokenizer, "CHUNK_CHARS", chunk_chars)
    got = corpus.tokenize_split(tok, path, block_size=1, max_tokens=max_tokens)
    expected = _old_tokenize_split(tok, path, max_tokens)
    assert got.dtype == expected.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    assert corpus.read_lines(path) == open(path, encoding="utf-8").read().splitlines(keepends=True)


@pytest.mark.parametrize("add_eos", [False, True])
def test_encode_lines_is_the_old_one_for_any_iterable(tok, add_eos):
    lines = corpus.synthetic_lines(120, seed=[9, 9])
    expected = _old_encode_lines(tok, lines, add_eos)
    for chunk_chars in (None, 1, 300):
        got = tokenizer.encode_lines(tok, iter(lines), add_eos, chunk_chars=chunk_chars)
        np.testing.assert_array_equal(got, expected)
    assert tokenizer.encode_lines(tok, []).dtype == np.int32 and len(tokenizer.encode_lines(tok, [])) == 0


def test_tokenize_split_stops_reading_at_max_tokens(tok, monkeypatch):
    """With a cap, lines past it are never read: the cap bounds the job, not the file."""
    read = []

    def lines():
        for i, line in enumerate(corpus.synthetic_lines(500, seed=[1, 2])):
            read.append(i)
            yield line

    stream = tokenizer.encode_lines(tok, lines(), max_tokens=50, chunk_chars=200)
    assert len(stream) == 50 and len(read) < 100


# ---------------------------------------------------------------- interpolation


def _old_knn_target_logprob(dists, nvalues, targets, temperature):
    logits = knnlm.neighbour_logits(dists, nvalues, temperature)
    match = np.asarray(nvalues) == np.asarray(targets)[:, None]
    total = knnlm._logsumexp(logits)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(total), knnlm._logsumexp(np.where(match, logits, -np.inf)) - total, -np.inf)


def _search_results(n=103, k=37, vocab=11, seed=0):
    """Random (dists, values, targets) with missing neighbours, rows with none, exact ties."""
    rng = np.random.default_rng(seed)
    dists = np.sort(rng.gamma(2.0, 30.0, size=(n, k)).astype(np.float32), axis=1)
    values = rng.integers(0, vocab, size=(n, k)).astype(np.int32)
    missing = rng.random((n, k)) < 0.2
    values[missing] = -1
    dists[missing] = np.float32(3.4e38)  # FAISS's distance of no neighbour
    values[[3, 50, 101]] = -1  # rows with no neighbour at all
    dists[7] = dists[7, 0]  # equal distances
    targets = rng.integers(0, vocab, size=n)
    lm = np.log(rng.uniform(0.01, 1.0, size=n)).astype(np.float32)
    return knnlm.SearchResults(targets, lm, np.zeros(n, np.int64), dists, values)


@pytest.mark.parametrize("chunk_rows", [None, 1, 7, 50, 102, 103, 1000])
@pytest.mark.parametrize("temperature", [1.0, 13.0])
def test_chunked_knn_target_logprob_is_the_unchunked_one(chunk_rows, temperature):
    found = _search_results()
    expected = _old_knn_target_logprob(found.dists, found.nbr_values, found.targets, temperature)
    got = knnlm.knn_target_logprob(found.dists, found.nbr_values, found.targets, temperature, chunk_rows)
    assert got.dtype == expected.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    assert np.isneginf(got[[3, 50, 101]]).all()


def test_knnlm_logprob_and_grid_are_the_unchunked_ones(monkeypatch):
    found = _search_results(n=250, k=64)
    lm = found.lm_logprob.astype(np.float64)
    lambdas, temperatures = [0.0, 0.25, 1.0], [1.0, 5.0]
    unchunked = {t: _old_knn_target_logprob(found.dists, found.nbr_values, found.targets, t)
                 for t in temperatures}
    monkeypatch.setattr(knnlm, "CHUNK_BYTES", 64 * 8 * knnlm.TEMPORARIES * 13)  # 13-row chunks
    np.testing.assert_array_equal(knnlm.knnlm_logprob(found, 0.25, 5.0), knnlm.interpolate(lm, unchunked[5.0], 0.25))
    grid = knnlm.grid(found, lambdas, temperatures)
    expected = [knnlm.perplexity(knnlm.interpolate(lm, unchunked[t], lam)) for t in temperatures for lam in lambdas]
    assert grid.perplexity.tolist() == expected


def test_empty_search_results():
    empty = knnlm.knn_target_logprob(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.int32), np.zeros(0), 1.0)
    assert empty.shape == (0,) and empty.dtype == np.float64


# ---------------------------------------------------------------- re-ranking


def _old_rerank(keys, queries, dists, ids, chunk=64):
    keys = np.load(keys, mmap_mode="r") if not isinstance(keys, np.ndarray) else keys
    exact = np.empty_like(dists)
    for start in range(0, len(queries), chunk):
        sel = ids[start : start + chunk]
        vecs = np.asarray(keys[np.where(sel >= 0, sel, 0)], dtype=np.float32)
        diff = vecs - queries[start : start + chunk, None, :]
        exact[start : start + chunk] = np.where(sel >= 0, np.einsum("qkd,qkd->qk", diff, diff), np.inf)
    order = np.argsort(exact, axis=1, kind="stable")
    return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "k.npy"
    np.save(path, np.random.default_rng(11).normal(size=(2000, 24)).astype(np.float16))
    return path


def _retrieved(n_queries=150, k=30, seed=12):
    """Queries with approximate ids: duplicates across queries, runs of consecutive ids, -1s."""
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(n_queries, 24)).astype(np.float32)
    ids = rng.integers(0, 2000, size=(n_queries, k))
    ids[:, :5] = np.arange(100, 105)  # the same consecutive ids in every query
    ids[rng.random(ids.shape) < 0.1] = -1
    ids[4] = -1  # a query with no neighbour at all
    dists = rng.uniform(0, 50, size=ids.shape).astype(np.float32)
    return queries, dists, ids


@pytest.mark.parametrize("budget_bytes", [1, 30 * 24 * 4 * 7, index.RERANK_BYTES])
@pytest.mark.parametrize("threads", [1, 3])
def test_rerank_is_the_old_one(key_file, budget_bytes, threads):
    queries, dists, ids = _retrieved()
    expected = _old_rerank(key_file, queries, dists, ids)
    for keys in (key_file, str(key_file), np.load(key_file)):
        got = index.rerank(keys, queries, dists, ids, threads=threads, budget_bytes=budget_bytes)
        for g, e in zip(got, expected):
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)
    assert np.isinf(got[0][4]).all() and (got[1][4] == -1).all()


def test_npy_rows_reads_any_list_of_rows(key_file):
    keys = np.load(key_file)
    rows = index.NpyRows(key_file)
    for pick in ([5, 3, 1999], [7, 8, 9, 10, 2, 3, 3, 3, 0], list(range(40, 90)), [], np.array([1998, 1999])):
        np.testing.assert_array_equal(rows[pick], keys[np.asarray(pick, dtype=np.int64)])
    with pytest.raises(IndexError):
        rows[[2000]]


# ---------------------------------------------------------------- search and evaluation


def _old_search(searcher, queries, k, batch=16384):
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    parts = []
    for start in range(0, len(queries), batch):
        q = queries[start : start + batch]
        if searcher.index is None:
            parts.append(index.exact_search(searcher.key_file, q, k))
        else:
            d, i = searcher.index.search(q, min(k, searcher.index.ntotal))
            if searcher.rerank_exact and searcher.kind not in index.EXACT_KINDS:
                d, i = _old_rerank(searcher.key_file, q, d, i)
            parts.append((d, i))
    if not parts:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _old_lm_and_queries(lm, examples, key="mlp_input", batch_tokens=8192):
    from knnlm_limits.model import logits_and_keys_at

    out = {"targets": [], "lm_logprob": [], "queries": [], "example": []}
    with torch.no_grad():
        for idx in batches_by_tokens(examples, batch_tokens):
            ids, _ = pad_batch(examples, idx)
            mask = scored_mask(examples, idx, ids.size(1))
            at = torch.zeros_like(ids, dtype=torch.bool)
            at[:, :-1] = mask
            logits, keys = logits_and_keys_at(lm, ids, at, key)
            logits, targets = logits.float(), ids[:, 1:][mask]
            target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            out["targets"].append(targets)
            out["lm_logprob"].append(target_logits - torch.logsumexp(logits, dim=-1))
            if keys is not None:
                out["queries"].append(keys.float())
            out["example"].append(torch.as_tensor(idx).unsqueeze(1).expand_as(mask)[mask])
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}


def _old_evaluate(lm, searcher, values, examples, k, key="mlp_input", batch_tokens=8192):
    found = _old_lm_and_queries(lm, examples, key, batch_tokens)
    dists, ids = _old_search(searcher, found.pop("queries"), k)
    return {**found, "dists": dists, "nbr_values": knnlm.neighbour_values(values, ids)}


@pytest.fixture(scope="module")
def lm_and_data(tmp_path_factory):
    lm = model.build_model(70, 2, 32, 2, 48, seed=3).eval()
    rng = np.random.default_rng(4)
    store = windows(rng.integers(0, 70, 1500).astype(np.int32), 48, 16)
    evaluated = windows(rng.integers(0, 70, 400).astype(np.int32), 48, 16)
    folder = tmp_path_factory.mktemp("store")
    datastore.build(lm, store, folder / "k.npy", folder / "v.npy", batch_tokens=300)
    settings = {"exact_max_keys": 500, "exact_index": "exact", "approximate_index": "IVF4,Flat",
                "index_train_sample": 2000, "nprobe": 2, "rerank": True}
    index.write_trained(folder / "trained", [folder / "k.npy"], settings["approximate_index"],
                        settings["index_train_sample"])
    index.write_shard(folder / "ivf", folder / "trained", folder / "k.npy")
    return lm, evaluated, folder, settings


@pytest.mark.parametrize("kind", ["exact", "ivf_reranked", "ivf"])
@pytest.mark.parametrize("k", [8, 5000])  # 5000: more than the datastore holds
def test_evaluate_saves_the_old_arrays(lm_and_data, kind, k):
    lm, evaluated, folder, settings = lm_and_data
    keys, values = datastore.load(folder / "k.npy", folder / "v.npy")
    if kind == "exact":
        searcher = index.Searcher(folder / "k.npy", "exact")
    else:
        searcher = index.Searcher.open(folder / "ivf", folder / "k.npy", {**settings, "rerank": kind == "ivf_reranked"})
    got = knnlm.evaluate(lm, searcher, values, evaluated, k=k, batch_tokens=100).arrays()
    expected = _old_evaluate(lm, searcher, values, evaluated, k=k, batch_tokens=100)
    assert list(got) == list(expected) == ["targets", "lm_logprob", "example", "dists", "nbr_values"]
    for name in expected:
        assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    if kind != "exact":
        assert (got["nbr_values"] == -1).any() or k == 8  # IVF with few probes misses some at k > its lists


def test_search_in_batches_is_the_old_search(lm_and_data):
    _, _, folder, settings = lm_and_data
    q = np.random.default_rng(5).normal(size=(45, 32)).astype(np.float32)
    exact = index.Searcher(folder / "k.npy", "exact")
    for searcher in (exact, index.Searcher.open(folder / "ivf", folder / "k.npy", settings)):
        for batch in (7, 45, 100):
            for g, e in zip(searcher.search(q, 10, batch=batch), _old_search(searcher, q, 10, batch=batch)):
                assert g.dtype == e.dtype
                np.testing.assert_array_equal(g, e)
        empty = searcher.search(q[:0], 10)
        assert empty[0].shape == empty[1].shape == (0, 10)


def test_lm_and_queries_without_a_key_and_without_examples(lm_and_data):
    lm, evaluated, _, _ = lm_and_data
    got, queries = knnlm.lm_and_queries(lm, evaluated, key=None, batch_tokens=70)
    expected = _old_lm_and_queries(lm, evaluated, None, 70)
    assert queries is None and list(got.arrays()) == ["targets", "lm_logprob", "example"] == list(expected)
    for name in expected:
        np.testing.assert_array_equal(getattr(got, name), expected[name])
    none, queries = knnlm.lm_and_queries(lm, Examples(evaluated.tokens, *(np.zeros(0, np.int64),) * 3))
    assert queries.shape == (0, 32) and queries.dtype == np.float32 and none.targets.shape == (0,)


def test_datastore_keys_are_the_old_ones(lm_and_data):
    """Masking and narrowing on the model's device first gives the keys of narrowing on the host."""
    lm, evaluated, _, _ = lm_and_data
    expected = []
    with torch.no_grad():
        for idx in batches_by_tokens(evaluated, 100):
            ids, _ = pad_batch(evaluated, idx)
            mask = scored_mask(evaluated, idx, ids.size(1))
            expected.append(model.keys_only(lm, ids)[:, :-1].float().cpu()[mask].to(torch.float16).numpy())
    keys, _ = datastore.in_memory(lm, evaluated, batch_tokens=100)
    np.testing.assert_array_equal(keys, np.concatenate(expected))


# ---------------------------------------------------------------- disk space


def _free(monkeypatch, n_bytes):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**15, 10**15 - n_bytes, n_bytes))


def test_require_free_space_names_path_needed_and_free(tmp_path, monkeypatch):
    _free(monkeypatch, 1000)
    disk.require_free_space(tmp_path / "a" / "b" / "big.npy", 1000, "a big file")  # folders not made yet: fine
    needs = r"a big file: .*big\.npy' needs 1001 bytes .* has 1000 bytes free"
    with pytest.raises(disk.NotEnoughSpace, match=needs) as err:
        disk.require_free_space(tmp_path / "big.npy", 1001, "a big file")
    assert isinstance(err.value, OSError) and err.value.errno == 28


def test_datastore_and_index_check_the_disk_before_writing(lm_and_data, tmp_path, monkeypatch):
    lm, evaluated, folder, settings = lm_and_data
    n, dim = evaluated.n_scored(), lm.config.hidden_size
    _free(monkeypatch, n * dim * 2)  # room for the keys, not for keys and values
    with pytest.raises(disk.NotEnoughSpace, match=r"datastore's keys and values.*k\.npy"):
        datastore.build(lm, evaluated, tmp_path / "k.npy", tmp_path / "v.npy")
    assert list(tmp_path.iterdir()) == []  # nothing written, no tmp file left
    n_keys = len(index.NpyRows(folder / "k.npy"))
    need = index.index_file_bytes("IVF4,Flat", n_keys, 32)
    assert need == n_keys * (32 * 4 + 8) + 4 * 32 * 4  # codes and ids, and the 4 centroids
    _free(monkeypatch, need - 1)
    with pytest.raises(disk.NotEnoughSpace, match=r"IVF4,Flat index.*index\.faiss"):
        index.write_shard(tmp_path / "ivf", folder / "trained", folder / "k.npy")
    assert not (tmp_path / "ivf").exists()


@pytest.mark.parametrize("factory", ["Flat", "SQfp16", "IVF4,PQ4x4", "IVF4,Flat", "IVF4,SQ8", "IVF8,PQ6", "HNSW8"])
def test_index_file_size_estimate(key_file, tmp_path, factory):
    """Never above the written size; where the code size is known, every byte that grows with
    the keys is counted: the written file of 2,000 keys minus that of 1,000 is exactly the
    estimates' difference (an IVF-PQ estimate without its codes, or without the ids, is off by
    1,000 x code size or 8,000 bytes), and what is left is what does not grow with the keys:
    the header and trained tables, at most the 8-bit PQ codebooks (dim x 256 floats) and 1 KB.
    (Half the written size, which this test allowed, let the codes go uncounted.)"""
    keys = np.load(key_file)
    written = {}
    for n in (1000, 2000):
        path = tmp_path / f"i{n}.faiss"
        faiss.write_index(index.build(keys[:n], factory), str(path))
        written[n] = path.stat().st_size
    estimate = {n: index.index_file_bytes(factory, n, keys.shape[1]) for n in written}
    assert all(estimate[n] <= written[n] for n in written)
    if factory.startswith("HNSW"):  # its graph is not counted: the float16 keys' bytes stand in
        assert estimate[2000] == keys.nbytes
    else:
        assert estimate[2000] - estimate[1000] == written[2000] - written[1000]
        assert written[2000] - estimate[2000] <= keys.shape[1] * 256 * 4 + 1024
