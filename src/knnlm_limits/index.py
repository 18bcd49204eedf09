"""Index stage: how a datastore's keys are searched, chosen per datastore.

A datastore of at most ``exact_max_keys`` keys is searched exactly, one with
more by the approximate FAISS factory (``IVF4096,PQ64`` and the like, trained on
a random sample of keys). Exact search is ``exact`` by default: no index at
all, the float16 key file read in blocks, each block widened to float32 and
searched with BLAS (FAISS's flat kernel), the per-block top-k merged; the
block size bounds memory. ``Flat`` and ``SQfp16`` (both exact over float16
keys) remain available as FAISS indexes.

Approximate neighbours can be re-ranked by their exact distance recomputed
from the stored float16 keys, as the original kNN-LM does.

A sharded datastore (``shards.py``) is indexed in two steps: one trained index with no
keys (``write_trained``: coarse quantizer and codebooks, from a seeded sample drawn across
every shard), then one copy of it per shard filled with that shard's keys
(``write_shard``); each index folder holds ``index.json`` (what it is) and ``index.faiss``.
An index stores its shard's rows as ids; the shard's search adds the shard's offset.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from . import disk, io

EXACT = "exact"
EXACT_KINDS = (EXACT, "Flat", "SQfp16")
BLOCK_BYTES = 128 * 2**20  # float32 bytes of one key block in exact search (bounds its memory)
WIDEN_ROWS = 16_384  # float16 rows read and widened at a time into the block
RERANK_BYTES = 128 * 2**20  # float32 neighbour vectors of one sub-batch of re-ranked queries (~2x in all)
READ_THREADS = 4  # readers of the key file in re-ranking (random reads want several in flight)
PQ_PART = re.compile(r"PQ(\d+)(?:x(\d+))?")  # a factory's PQ<m>[x<bits>], then suffixes ('np', 'fs')


class IndexConfigError(ValueError):
    """A FAISS factory string in the config cannot be built; the message names the key."""


class NpyRows:
    """Row ranges of a 2-D .npy file read with plain file reads (no memory map,
    whose pages would stay resident)."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            self.shape, fortran, self.dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran or len(self.shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {self.shape}")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        n, dim = self.shape
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(n)
            with open(self.path, "rb") as fh:
                fh.seek(self.offset + start * self.row_bytes)
                return np.fromfile(fh, dtype=self.dtype, count=max(stop - start, 0) * dim).reshape(-1, dim)
        out = np.empty((len(rows), dim), dtype=self.dtype)
        self.read_into(rows, out)
        return out

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize

    def read_into(self, rows, out: np.ndarray) -> None:
        """out[i] = row rows[i]; each run of consecutive rows is one positioned read.

        Sorted rows read in file order; os.preadv fills `out` in place and releases
        the GIL, so several threads can each read a part of the rows at once.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for first, count, at in _runs(rows):
                _pread_exactly(fd, out[at : at + count], self.offset + first * self.row_bytes)
        finally:
            os.close(fd)


def _runs(rows):
    """(first row, number of rows, position in `rows`) of each run of consecutive rows."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) == 0:
        return []
    starts = np.concatenate([[0], np.flatnonzero(np.diff(rows) != 1) + 1])
    counts = np.diff(np.append(starts, len(rows)))
    return zip(rows[starts].tolist(), counts.tolist(), starts.tolist())


def _pread_exactly(fd: int, out: np.ndarray, offset: int) -> None:
    """Fill the contiguous array `out` from the file at `offset` (a read may come back short)."""
    view = memoryview(out).cast("B")
    while len(view):
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise IndexError(f"row past the end of the key file (offset {offset})")
        view, offset = view[got:], offset + got


def _is_path(x) -> bool:
    return isinstance(x, (str, bytes)) or hasattr(x, "__fspath__")


def as_rows(keys):
    """A .npy path as NpyRows, a list of them (a sharded datastore's files, in order) as one
    ShardedRows; an array as itself."""
    if _is_path(keys):
        return NpyRows(keys)
    if isinstance(keys, (list, tuple)) and keys and all(_is_path(k) for k in keys):
        from .shards import ShardedRows

        return ShardedRows(keys)
    return keys


def choose(n_keys: int, settings: dict) -> str:
    """The index kind of a datastore of `n_keys` keys: exact below the threshold."""
    return settings["exact_index"] if n_keys <= settings["exact_max_keys"] else settings["approximate_index"]


def planned_kind(config: dict) -> str:
    """The corpus datastore's index kind, chosen while planning (the DAG holds index jobs only
    for a FAISS index) by the most entries the config allows it: the training tokens of
    corpus.max_train_tokens, else of corpus.expected_tokens.train (one entry a token at most)."""
    from .costs.base import split_tokens

    bound = split_tokens(config, "train")
    if bound is None:
        raise IndexConfigError("the datastore's index (knn.exact_max_keys) is chosen while planning from the "
                               "training tokens the config allows: set corpus.max_train_tokens or "
                               "corpus.expected_tokens.train")
    return choose(bound, config["knn"])


def ivf_shape(factory: str, d: int) -> tuple[int, int]:
    """(number of lists, bytes per code) of an 'IVF<n>,PQ<m>' / 'PQ<m>' / 'IVF<n>,SQ8' / 'IVF<n>,Flat' factory."""
    nlist, code = 1, 4 * d
    for part in factory.split(","):
        if ivf := re.match(r"IVF(\d+)", part):  # the list count only: 'IVF64_HNSW32' has 64 lists
            nlist = int(ivf[1])
        elif pq := PQ_PART.match(part):
            code = (int(pq[1]) * int(pq[2] or 8) + 7) // 8  # FAISS rounds a code's bits up to whole bytes
        elif part == "SQ8":
            code = d
        elif part in ("SQfp16", "SQ16"):
            code = 2 * d
    return nlist, code


def reranks(kind: str, rerank: bool) -> bool:
    """Whether a search through an index of `kind` re-ranks its neighbours by exact distance
    (knn.rerank): only an approximate index's; an exact search's distances are exact already."""
    return bool(rerank) and kind not in EXACT_KINDS


def code_scan_flops(factory: str, d: int) -> int:
    """FLOPs of comparing a query with one stored code of `factory` while scanning a list: one
    table look-up addition per sub-quantiser of a PQ code, a distance (2 d) for a Flat or SQ code."""
    for part in factory.split(","):
        if pq := PQ_PART.match(part):
            return int(pq[1])
    return 2 * d


def check_factory(factory: str, dim: int, key: str) -> None:
    """Fail now, naming the config key, if FAISS cannot build `factory` for `dim`-d keys."""
    if factory == EXACT:
        return
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_L2)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1]
        raise IndexConfigError(f"config key {key!r}: FAISS cannot build {factory!r} for {dim}-d keys: {first}") from None


# ---------------------------------------------------------------- building


def _reserve_codes(index, n: int) -> None:
    """Give a flat-codes index (Flat, SQ, PQ) its final code buffer up front.

    Growing the buffer chunk by chunk reallocates it, holding old and new copies
    at once (up to 2x the index); resizing to the final size and back to zero
    keeps the capacity, so every later add fills it in place.
    """
    if getattr(index, "ntotal", 1) == 0 and hasattr(index, "codes") and hasattr(index, "code_size"):
        index.codes.resize(n * index.code_size)
        index.codes.resize(0)


def _without_polysemous_training(index) -> None:
    """FAISS's factory trains an IVF-PQ's codes for polysemous (Hamming) filtering, which no
    search here uses: measured on the default datastore, IVF256,PQ16 trained in 30.4 s with
    it and 3.8 s without, to the same neighbours and distances."""
    try:
        inner = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # not an IVF index
        inner = faiss.downcast_index(index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False


def build(keys, factory: str, train_sample: int = 100_000, seed: int = 0,
          chunk: int = 16_384, log=None) -> faiss.Index:
    """A FAISS index of `keys` (a .npy path, read in chunks, or an array)."""
    keys = as_rows(keys)
    n = len(keys)
    index = trained(keys, factory, train_sample, seed)
    _reserve_codes(index, n)
    for start in tqdm(range(0, n, chunk), file=log, mininterval=5, desc="index"):
        index.add(np.asarray(keys[start : start + chunk], dtype=np.float32))
    return index


def index_file_bytes(factory: str, n: int, dim: int) -> int:
    """At least the size of the index file of `factory` holding n keys: its codes, plus
    the ids and coarse centroids of an IVF index; without a known code size (HNSW), the
    float16 key file's size."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    try:
        ivf = faiss.extract_index_ivf(index)
        return n * (ivf.code_size + 8) + ivf.nlist * dim * 4
    except RuntimeError:
        pass  # not an IVF index
    try:
        return n * index.sa_code_size()
    except RuntimeError:
        return n * dim * 2


def trained(keys, factory: str, train_sample: int = 100_000, seed: int = 0) -> faiss.Index:
    """An empty index of `factory` trained on a seeded sample of `keys` (a .npy path, several
    (a sharded datastore: the sample is drawn over all of them), or an array)."""
    keys = as_rows(keys)
    n, dim = keys.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    _without_polysemous_training(index)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(train_sample, n), replace=False))
        index.train(np.asarray(keys[rows], dtype=np.float32))
    return index


def _write(folder, index: faiss.Index, manifest: dict) -> dict:
    """An index folder: index.faiss, then index.json (what it is), atomically."""
    with io.atomic_path(folder) as tmp:
        tmp.mkdir()
        faiss.write_index(index, str(tmp / "index.faiss"))
        (tmp / "index.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def write_trained(folder, key_files, factory: str, train_sample: int, log=None) -> dict:
    """The index stage's first job: `factory` trained (no keys) on a seeded sample of the
    datastore's keys, drawn across every shard (one shard: the unsharded datastore's sample)."""
    keys = as_rows(key_files)
    index = trained(keys, factory, train_sample)
    print(f"{factory} trained on {min(train_sample, len(keys))} of {len(keys)} keys", file=log)
    return _write(folder, index, {"kind": factory, "keys": 0, "trained_on": int(min(train_sample, len(keys))),
                                  "datastore_keys": len(keys), "dim": int(keys.shape[1])})


def write_shard(folder, trained_folder, key_file, chunk: int = 16_384, log=None) -> dict:
    """The index stage's job for one shard: a copy of the trained index holding the shard's keys."""
    keys = NpyRows(key_file)
    index = faiss.read_index(str(Path(trained_folder) / "index.faiss"))
    kind = read_manifest(trained_folder)["kind"]
    # before hours of adding: the written file must fit
    disk.require_free_space(Path(folder) / "index.faiss", index_file_bytes(kind, len(keys), keys.shape[1]),
                            f"the {kind} index")
    _reserve_codes(index, len(keys))
    for start in tqdm(range(0, len(keys), chunk), file=log, mininterval=5, desc="index"):
        index.add(np.asarray(keys[start : start + chunk], dtype=np.float32))
    return _write(folder, index, {"kind": kind, "keys": len(keys), "dim": int(keys.shape[1])})


def read_manifest(index_dir) -> dict:
    """An index folder's index.json: its kind (and what the stage that wrote it records)."""
    return json.loads((Path(index_dir) / "index.json").read_text())


# ---------------------------------------------------------------- searching


def exact_block_rows(n_keys: int, k: int, dim: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Keys in one float32 block of exact search: block_bytes' worth, at least k, at most all."""
    return min(n_keys, max(k, block_bytes // (4 * dim)))


def exact_search(keys, queries: np.ndarray, k: int, block_bytes: int = BLOCK_BYTES):
    """Exact k nearest keys by squared L2: (dists, ids), each (N, min(k, n_keys)).

    `keys` is a .npy path or an array (float16 or float32). One float32 block
    buffer is filled a few float16 rows at a time (no second copy of the block),
    searched with FAISS's BLAS kernel, and its top-k merged into a running heap.
    """
    keys = as_rows(keys)
    n, dim = keys.shape
    k = min(k, n)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rows = exact_block_rows(n, k, dim, block_bytes)
    block = np.empty((rows, dim), dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k)
    for start in range(0, n, rows):
        m = min(rows, n - start)
        for sub in range(0, m, WIDEN_ROWS):
            block[sub : min(m, sub + WIDEN_ROWS)] = keys[start + sub : start + min(m, sub + WIDEN_ROWS)]
        dists, ids = faiss.knn(queries, block[:m], min(k, m))
        ids += start  # in place: a second (N, k) int64 array would raise the batch's peak
        heap.add_result(dists, ids)
        del dists, ids
    heap.finalize()
    return heap.D, heap.I


def exact_distances(keys, queries: np.ndarray, ids: np.ndarray, threads: int = READ_THREADS,
                    budget_bytes: int = RERANK_BYTES) -> np.ndarray:
    """Exact squared L2 from each query to each of its retrieved ids (inf where -1), read from
    the stored keys, in the ids' order.

    Queries go in sub-batches whose neighbours' float32 vectors take ~budget_bytes;
    a sub-batch reads each distinct key once, in file order (not one random read
    per neighbour, in retrieval order).
    """
    keys = as_rows(keys)
    per_query = max(1, ids.shape[1] * keys.shape[1] * 4)
    step = max(1, budget_bytes // per_query)
    exact = np.empty(ids.shape, dtype=np.float32)
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(queries), step):
            sub = slice(start, start + step)
            exact[sub] = _exact_sq_l2(keys, queries[sub], ids[sub], pool, threads)
    return exact


def rerank(keys, queries: np.ndarray, dists: np.ndarray, ids: np.ndarray,
           threads: int = READ_THREADS, budget_bytes: int = RERANK_BYTES):
    """Exact squared L2 of each retrieved id from the stored keys, rows re-sorted by it."""
    exact = exact_distances(keys, queries, ids, threads, budget_bytes)
    order = np.argsort(exact, axis=1, kind="stable")
    return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)


def _exact_sq_l2(keys, queries: np.ndarray, ids: np.ndarray, pool, threads: int) -> np.ndarray:
    """(q, k) squared L2 from each query to its retrieved keys, inf where the id is -1."""
    safe = np.where(ids >= 0, ids, 0)
    distinct, where = np.unique(safe, return_inverse=True)
    # float32 differences (float64 if the queries are), squared and summed by einsum
    rows = _read_sorted(keys, distinct, np.result_type(np.float32, queries.dtype), pool, threads)
    diff = np.take(rows, where.reshape(safe.shape), axis=0, mode="clip")  # (q, k, d); "clip": no bounds pass
    del rows
    diff -= queries[:, None, :]
    return np.where(ids >= 0, np.einsum("qkd,qkd->qk", diff, diff), np.inf)


def _read_sorted(keys, sorted_ids: np.ndarray, dtype, pool, threads: int) -> np.ndarray:
    """Rows `sorted_ids` of the keys, widened to `dtype` (exactly: float16 fits in float32).

    From a file, `threads` readers each read and widen a contiguous shard of the ids
    (file reads and NumPy's casts release the GIL).
    """
    if not isinstance(keys, NpyRows):
        return np.asarray(keys[sorted_ids], dtype=dtype)
    out = np.empty((len(sorted_ids), keys.shape[1]), dtype=dtype)

    def read(shard):
        out[shard] = keys[sorted_ids[shard]]

    bounds = np.linspace(0, len(sorted_ids), max(1, threads) + 1).astype(int)
    list(pool.map(read, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]))
    return out


class Searcher:
    """Search a datastore as its index stage decided: exact blocks or a FAISS index."""

    def __init__(self, key_file, kind: str, index=None, nprobe: int | None = None, rerank_exact: bool = False,
                 threads: int = READ_THREADS):
        self.key_file, self.kind, self.index, self.rerank_exact = key_file, kind, index, rerank_exact
        self.threads = threads
        if index is not None and nprobe is not None:
            try:
                faiss.extract_index_ivf(index).nprobe = nprobe
            except RuntimeError:
                pass  # not an IVF index: nothing to probe

    @classmethod
    def open(cls, index_dir, key_file, settings: dict) -> "Searcher":
        manifest = read_manifest(index_dir)
        index = None if manifest["kind"] == EXACT else faiss.read_index(str(Path(index_dir) / "index.faiss"))
        return cls(key_file, manifest["kind"], index, settings["nprobe"], settings["rerank"],
                   settings.get("threads", READ_THREADS))

    @classmethod
    def of_shard(cls, key_file, index_dir, settings: dict) -> "Searcher":
        """A shard's search: through its index folder, or exact over its keys (index_dir None)."""
        if index_dir is None:
            return cls(key_file, EXACT, threads=settings.get("threads", READ_THREADS))
        return cls.open(index_dir, key_file, settings)

    @classmethod
    def in_memory(cls, keys: np.ndarray, settings: dict, log=None) -> "Searcher":
        """For small datastores built inside one job (Macondo): same choice, no files."""
        kind = choose(len(keys), settings)
        index = None if kind == EXACT else build(keys, kind, settings["index_train_sample"], log=log)
        return cls(keys, kind, index, settings["nprobe"], settings["rerank"])

    def width(self, k: int) -> int:
        """k' = min(k, datastore size): the neighbours a search gives each query."""
        return min(k, len(as_rows(self.key_file)) if self.index is None else self.index.ntotal)

    def batches(self, queries: np.ndarray, k: int, batch: int = 16384, log=None):
        """(rows, dists, ids) of each batch of queries in turn, rows the batch's slice of
        `queries`: the caller keeps what it needs of a batch, and nothing is joined."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        for start in tqdm(range(0, len(queries), batch), file=log, mininterval=5, desc=f"search ({self.kind})"):
            q = queries[start : start + batch]
            yield (slice(start, start + len(q)), *self._search(q, k))

    @property
    def reranks(self) -> bool:
        """Whether approximate neighbours are re-ranked by their exact distance."""
        return reranks(self.kind, self.rerank_exact)

    def candidates(self, q: np.ndarray, k: int):
        """(dists, ids, exact): q's k nearest by the index's own distance, and where it re-ranks
        their exact distances in the same order (else None)."""
        if self.index is None:
            return (*exact_search(self.key_file, q, k), None)
        dists, ids = self.index.search(q, min(k, self.index.ntotal))
        exact = exact_distances(self.key_file, q, ids, self.threads) if self.reranks else None
        return dists, ids, exact

    def _search(self, q: np.ndarray, k: int):
        dists, ids, exact = self.candidates(q, k)
        if exact is None:
            return dists, ids
        order = np.argsort(exact, axis=1, kind="stable")
        return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)

    def search(self, queries: np.ndarray, k: int, batch: int = 16384, log=None):
        """(dists, ids), each (N, k'), k' = min(k, datastore size); id -1 = no neighbour."""
        width = self.width(k) if len(queries) else k  # no query: (0, k)
        dists, ids = np.empty((len(queries), width), np.float32), np.empty((len(queries), width), np.int64)
        for rows, batch_dists, batch_ids in self.batches(queries, k, batch, log):
            dists[rows], ids[rows] = batch_dists, batch_ids
            del batch_dists, batch_ids  # not alive while the next batch is searched
        return dists, ids


# ---------------------------------------------------------------- the search on a GPU (timing only)


def faiss_gpu_unavailable() -> str | None:
    """Why FAISS cannot search on a GPU here; None where it can."""
    if not hasattr(faiss, "StandardGpuResources"):
        return "FAISS here has no GPU support (faiss-cpu)"
    if faiss.get_num_gpus() == 0:
        return "FAISS sees no GPU"
    return None


def gpu_search(searcher: Searcher, k: int):
    """(search, None): `searcher`'s search on GPU 0, for queries placed there as a torch tensor
    (faiss.contrib.torch_utils); or (None, why) where FAISS cannot do it there. A FAISS index is
    moved whole (its nprobe kept); exact search is a flat GPU index of the float32 keys, where
    they fit in half the GPU's free memory. Exact re-ranking reads the key file on the host:
    not a GPU search."""
    why = faiss_gpu_unavailable()
    if why is None and searcher.reranks:
        why = "its exact re-ranking reads the key file on the host"
    if why is None and searcher.index is None:
        import torch

        keys = as_rows(searcher.key_file)
        need, free = keys.shape[0] * keys.shape[1] * 4, torch.cuda.mem_get_info()[0]
        if need > free // 2:
            why = f"its {need / 2**30:.1f} GiB of float32 keys do not fit half the GPU's free {free / 2**30:.1f} GiB"
    if why is not None:
        return None, why
    import faiss.contrib.torch_utils  # noqa: F401  (FAISS indexes take torch tensors, on the GPU too)

    resources = faiss.StandardGpuResources()
    if searcher.index is None:
        keys = as_rows(searcher.key_file)
        index = faiss.GpuIndexFlatL2(resources, keys.shape[1])
        for start in range(0, len(keys), WIDEN_ROWS):
            index.add(np.asarray(keys[start : start + WIDEN_ROWS], dtype=np.float32))
    else:
        index = faiss.index_cpu_to_gpu(resources, 0, searcher.index)
        try:
            index.nprobe = faiss.extract_index_ivf(searcher.index).nprobe
        except RuntimeError:
            pass  # not an IVF index: nothing to probe
    width = min(k, index.ntotal)

    def search(queries):
        return index.search(queries, width)

    search.resources = resources  # alive as long as the index on the GPU is
    return search, None
