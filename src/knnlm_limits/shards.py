"""The datastore in shards (``knn.shards``): built, indexed and searched shard by shard.

Shard s of N holds the entries of a contiguous range of the training split's windows: a
range of whole batches of ``knn.batch_tokens`` as the unsharded datastore batches them, so
that every key is computed in the very batch it would be unsharded and is the same bits.
Its entries have global ids ``offset + row`` (offset: the entries of the shards before it,
recorded in its ``shard.json``), so the shards concatenated in order are the unsharded
datastore, entry for entry, and neighbours, the neighbours page and the memory's targets
keep one id space.

A search answers from each shard alone: every query's k nearest entries of that shard,
ordered by (distance, id), with their values, and with the exact distances where
approximate neighbours are re-ranked. A merge keeps each query's k nearest of the N·k by
(distance, id) and, when re-ranking, orders those by exact distance. For exact search
that is the unsharded search's answer: the same keys give the same distances, and
(distance, id) is the order in which the unsharded search keeps equal distances too. For
an IVF index whose trained quantizer and codebooks every shard shares (``index.trained``),
each key's list and code, hence its approximate distance, do not depend on the shard, so
the k nearest of the union are the unsharded index's k nearest; re-ranking them
afterwards is the unsharded re-ranking. Where several entries tie at the k-th distance,
which of them is kept depends on tie order (a search of FAISS's keeps the first it meets),
the one place the answers may differ.

The first s shards are a datastore of their own (s/N of the training windows): merging
only their answers gives its kNN-LM without a second search (the datastore-size curve).

Everything here is NumPy (the merge and the sharded views run in jobs that load no model).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import io

MANIFEST = "shard.json"
ANSWER_ARRAYS = ("dists", "ids", "values", "exact")  # one shard's answer to a set of queries
MERGE_ROWS = 1024  # queries merged at a time (their N·k candidates' temporaries bound the memory)


class ShardError(ValueError):
    """Shards that do not fit together, or more shards than the datastore has batches."""


# ---------------------------------------------------------------- cutting the training split


def batch_ranges(examples, batch_tokens: int, shards: int) -> list[tuple[int, int]]:
    """The window range [first, stop) of each shard: whole batches of the datastore's
    batching (tokens.batches_by_tokens), cut at the batch boundaries nearest to s/N of the
    scored entries (every shard at least one batch)."""
    from .tokens import batches_by_tokens

    batches = list(batches_by_tokens(examples, batch_tokens))
    if shards < 1:
        raise ShardError(f"knn.shards must be at least 1, not {shards}")
    if shards > len(batches):
        raise ShardError(f"knn.shards {shards} exceeds the datastore's {len(batches)} batches of knn.batch_tokens "
                         f"{batch_tokens} tokens: lower knn.shards (or knn.batch_tokens)")
    scored = np.maximum(examples.sizes - examples.score_start, 0)
    ends = np.cumsum([scored[b].sum() for b in batches])  # entries up to the end of each batch
    cuts = []  # shard s + 1 starts at batch cuts[s]
    for s in range(1, shards):
        lowest, highest = (cuts[-1] if cuts else 0) + 1, len(batches) - (shards - s)
        candidates = np.arange(lowest, highest + 1)
        cuts.append(int(candidates[np.argmin(np.abs(ends[candidates - 1] - s * ends[-1] / shards))]))
    bounds = [0, *cuts, len(batches)]
    return [(batches[a][0], batches[b - 1][-1] + 1) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_examples(examples, batch_tokens: int, shard: int, shards: int):
    """(the shard's windows as Examples, its offset: the entries of the shards before it, and
    its window range (first, stop) of the whole datastore's windows)."""
    from .tokens import Examples

    if not 0 <= shard < shards:
        raise ShardError(f"shard {shard} is not one of 0..{shards - 1} (knn.shards {shards})")
    first, stop = batch_ranges(examples, batch_tokens, shards)[shard]
    before = np.maximum(examples.sizes[:first] - examples.score_start[:first], 0).sum()
    part = Examples(examples.tokens, examples.starts[first:stop], examples.sizes[first:stop],
                    examples.score_start[first:stop])
    return part, int(before), (first, stop)


def write_manifest(path, shard: int, shards: int, offset: int, entries: int, windows: tuple[int, int]) -> None:
    """A shard's shard.json: which shard it is, its offset (its first entry's global id), its
    entries and the window range they come from."""
    facts = {"shard": shard, "shards": shards, "offset": offset, "entries": entries, "windows": list(windows)}
    io.write_text(path, json.dumps(facts, indent=1) + "\n")


def read_manifest(path) -> dict:
    """A shard.json (or the shard.json of a shard's folder)."""
    path = Path(path)
    return json.loads((path / MANIFEST if path.is_dir() else path).read_text())


def offsets(manifests) -> np.ndarray:
    """(N + 1,) entry offsets of the shards of these shard.json files, in order; checks that they
    are consecutive shards of one datastore (each starting where the one before ends)."""
    out = [0]
    for path in manifests:
        m = read_manifest(path)
        if m["offset"] != out[-1]:
            raise ShardError(f"{path}: shard {m['shard']} starts at entry {m['offset']}, the shards before it "
                             f"end at {out[-1]}: not the next shard of one datastore (rebuild the datastore)")
        out.append(m["offset"] + m["entries"])
    return np.asarray(out, dtype=np.int64)


class ShardedRows:
    """The concatenation of several .npy files (a sharded datastore's keys, values or
    positions, 1-D or 2-D), read by global row without loading any file whole."""

    def __init__(self, paths):
        self.parts = [np.load(p, mmap_mode="r") for p in paths]
        shapes = {p.shape[1:] for p in self.parts}
        if len(shapes) != 1 or len({p.dtype for p in self.parts}) != 1:
            raise ShardError(f"shards of different widths or types: {[str(p) for p in paths]}")
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        self.dtype = self.parts[0].dtype
        self.shape = (int(self.starts[-1]), *self.parts[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate([np.asarray(p) for p in self.parts]) if self.parts else np.zeros(self.shape, self.dtype)
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        scalar = np.ndim(rows) == 0
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range of {len(self)} entries")
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            out[at] = self.parts[s][rows[at] - self.starts[s]]
        return out[0] if scalar else out


# ---------------------------------------------------------------- one shard's answer


def answer(searcher, values, queries: np.ndarray, k: int, offset: int) -> dict:
    """One shard's answer to a batch of queries: its k nearest entries by (distance, id), with
    global ids (offset + row; -1: none), values (-1: none) and, where the search re-ranks,
    their exact distances (else no 'exact')."""
    from .knnlm import neighbour_values

    dists, ids, exact = searcher.candidates(np.ascontiguousarray(queries, dtype=np.float32), k)
    # within the shard: (distance, id), as the merge reads it (FAISS leaves ties in any order)
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), dists), axis=1)
    dists, ids = np.take_along_axis(dists, order, 1), np.take_along_axis(ids, order, 1)
    out = {"dists": dists, "ids": np.where(ids >= 0, ids + offset, -1), "values": neighbour_values(values, ids)}
    if exact is not None:
        out["exact"] = np.take_along_axis(exact, order, 1)
    return out


class ShardedSearch:
    """The shards' searchers side by side: a search asks each and merges, in one process (to
    time the sharded search as a whole, and for datastores small enough to search in one job)."""

    def __init__(self, searchers, values, offsets):
        self.searchers, self.values, self.offsets = searchers, values, offsets

    @classmethod
    def open(cls, key_files, value_files, manifests, index_dirs, settings: dict) -> "ShardedSearch":
        from .index import Searcher

        index_dirs = index_dirs or [None] * len(key_files)
        return cls([Searcher.of_shard(k, i, settings) for k, i in zip(key_files, index_dirs)],
                   [np.load(v, mmap_mode="r") for v in value_files], offsets(manifests)[:-1])

    @property
    def kind(self) -> str:
        return self.searchers[0].kind

    def search(self, queries: np.ndarray, k: int):
        """(dists, ids, values) of each query's k nearest entries over every shard."""
        parts = [answer(s, v, queries, k, int(o)) for s, v, o in zip(self.searchers, self.values, self.offsets)]
        return merge_rows(parts, k)


def gpu_search(sharded: ShardedSearch, k: int):
    """(search, None): the sharded search on GPU 0 (index.gpu_search, shard by shard, the answers'
    k nearest kept there), for timing it beside the memory; or (None, why) where a shard cannot
    be searched there. Its ids are the shards' own rows: a timing, not an answer."""
    from .index import gpu_search as on_gpu

    parts = []
    for s in sharded.searchers:
        search, why = on_gpu(s, k)
        if search is None:
            return None, why
        parts.append(search)

    def search(queries):
        import torch

        dists = torch.cat([part(queries)[0] for part in parts], dim=1)
        return torch.topk(dists, min(k, dists.shape[1]), dim=1, largest=False)

    search.parts = parts  # each holds its GPU resources
    return search, None


def answer_shard(searcher, values, queries: np.ndarray, k: int, offset: int, folder, name: str,
                 batch: int = 16_384, log=None) -> int:
    """One shard's answer to `queries`, written as folder/<name>_<array>.npy: for every query
    its k nearest entries of the shard by (distance, id): distances (the index's own), global
    ids (offset + row; -1: none), values (-1: none) and, where the search re-ranks, their exact
    distances. Returns the answer's width (k' = min(k, the shard's entries))."""
    width = searcher.width(k) if len(queries) else min(k, len(values))
    arrays = ["dists", "ids", "values"] + (["exact"] if searcher.reranks else [])
    dtypes = {"dists": np.float32, "ids": np.int64, "values": np.int32, "exact": np.float32}
    folder = Path(folder)
    with contextlib.ExitStack() as files:
        out = {a: files.enter_context(io.NpyWriter(files.enter_context(io.atomic_path(folder / f"{name}_{a}.npy")),
                                                   dtypes[a], (len(queries), width))) for a in arrays}
        for start in tqdm(range(0, len(queries), batch), file=log, mininterval=5, desc=f"search {name} ({searcher.kind})"):
            part = answer(searcher, values, queries[start : start + batch], k, offset)
            for a in arrays:
                out[a].write(part[a])
            del part  # not alive while the next batch is searched
    return width


def read_answer(folder, name: str) -> dict:
    """A shard's answer as memory maps (rows are read as merged)."""
    folder = Path(folder)
    return {a: np.load(folder / f"{name}_{a}.npy", mmap_mode="r") for a in ANSWER_ARRAYS
            if (folder / f"{name}_{a}.npy").is_file()}


# ---------------------------------------------------------------- merging the answers


def kept_columns(dists: np.ndarray, width: int) -> np.ndarray:
    """Column indices of each row's `width` smallest (distance, column) pairs, in that order.

    A column stands for its id: within a shard's answer the columns of equal distances are in
    id order, and the shards are concatenated in id order. One float partition finds each
    row's width-th distance t; every column below t is kept, and of the columns at t the
    first ones (a row keeps exactly `width`)."""
    rows, cols = dists.shape
    if width >= cols:
        return np.argsort(dists, axis=1, kind="stable")
    t = np.partition(dists, width - 1, axis=1)[:, width - 1 : width]
    below, at = dists < t, dists == t
    keep = below | at
    need = width - below.sum(1)
    tied = np.flatnonzero(at.sum(1) > need)  # rows with more columns at t than places left: the first ones
    if len(tied):
        keep[tied] = below[tied] | (at[tied] & (np.cumsum(at[tied], axis=1) <= need[tied, None]))
    kept = np.nonzero(keep)[1].reshape(rows, width)  # by column, then by distance (stable: ties by column)
    return np.take_along_axis(kept, np.argsort(np.take_along_axis(dists, kept, 1), axis=1, kind="stable"), 1)


def _gather(parts: list[dict], name: str, cols: np.ndarray) -> np.ndarray:
    """parts' array `name` concatenated along columns, at `cols` (without concatenating it)."""
    starts = np.cumsum([0, *(p[name].shape[1] for p in parts)])
    shard = np.searchsorted(starts, cols, side="right") - 1
    out = np.empty(cols.shape, dtype=np.asarray(parts[0][name]).dtype)
    for s, p in enumerate(parts):
        here = shard == s
        if here.any():
            where = np.clip(cols - starts[s], 0, p[name].shape[1] - 1)
            out[here] = np.take_along_axis(np.asarray(p[name]), where, 1)[here]
    return out


def merge_rows(parts: list[dict], k: int, own: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dists, ids, values), each (rows, k'), of these rows' k nearest over the shards' answers
    `parts` (dicts of the same rows' arrays, shards in order).

    Kept: the k smallest (distance, id); re-ranked (parts with 'exact'): ordered by exact
    distance, which is then the distance returned. With `own` (each row's own entry id: the
    memory's leave-one-out targets), k + 1 are kept, then the row's own entry dropped, else
    the last (as knnlm.leave_one_out does unsharded).
    """
    dists = np.concatenate([np.asarray(p["dists"]) for p in parts], axis=1)
    keep = min(k + (own is not None), dists.shape[1])
    cols = kept_columns(dists, keep)
    if "exact" in parts[0]:  # re-ranked: the kept candidates by exact distance, ties in kept order
        exact = _gather(parts, "exact", cols)
        order = np.argsort(exact, axis=1, kind="stable")
        cols, kept_dists = np.take_along_axis(cols, order, 1), np.take_along_axis(exact, order, 1)
    else:
        kept_dists = np.take_along_axis(dists, cols, 1)
    ids = _gather(parts, "ids", cols)
    if own is not None:
        width = min(k, keep - 1)
        mine = np.argsort(ids == np.asarray(own)[:, None], axis=1, kind="stable")[:, :width]
        cols, kept_dists, ids = (np.take_along_axis(a, mine, 1) for a in (cols, kept_dists, ids))
    return kept_dists, ids, _gather(parts, "values", cols)


def merged(answers: list[dict], k: int, own: np.ndarray | None = None, rows: int = MERGE_ROWS, log=None):
    """(row slice, dists, ids, values) of each chunk of rows merged over the shards' answers."""
    n = len(answers[0]["dists"])
    if any(len(a["dists"]) != n for a in answers):
        raise ShardError(f"the shards answered different numbers of queries: {[len(a['dists']) for a in answers]}")
    for start in tqdm(range(0, n, rows), file=log, mininterval=5, desc="merge"):
        part = slice(start, min(start + rows, n))
        chunk = [{name: a[name][part] for name in a} for a in answers]
        yield (part, *merge_rows(chunk, k, None if own is None else own[part]))


def merged_width(answers: list[dict], k: int, own: bool = False) -> int:
    total = sum(a["dists"].shape[1] for a in answers)
    keep = min(k + own, total)
    return min(k, keep - 1) if own else keep


def merge_search(found, answers: list[dict], k: int, out, ids_path=None, log=None):
    """The kNN-LM's search results: `found` (the LM pass's SearchResults) with each position's
    k nearest over the shards' answers, saved to `out`; the ids also to ids_path (.npy)."""
    width = merged_width(answers, k)
    dists = np.empty((len(found), width), np.float32)
    nbr_values = np.empty((len(found), width), np.int32)
    with contextlib.ExitStack() as files:
        ids_file = None
        if ids_path is not None:
            ids_file = files.enter_context(io.NpyWriter(files.enter_context(io.atomic_path(ids_path)), np.int64,
                                                        (len(found), width)))
        for rows, d, ids, v in merged(answers, k, log=log):
            dists[rows], nbr_values[rows] = d, v
            if ids_file is not None:
                ids_file.write(ids)
    result = found.with_neighbours(dists, nbr_values)
    result.save(out)
    return result


def merge_sample(answers: list[dict], rows: np.ndarray, k: int) -> dict:
    """The exact neighbours of the fidelity sample (inspection.exact_sample), merged."""
    if not len(rows):
        width = merged_width(answers, k) if answers else k
        return {"rows": rows, "dists": np.zeros((0, width), np.float32), "ids": np.zeros((0, width), np.int64),
                "values": np.zeros((0, width), np.int32)}
    dists, ids, values = merge_rows([{n: np.asarray(a[n]) for n in a} for a in answers], k)
    return {"rows": rows, "dists": dists, "ids": ids, "values": values}
