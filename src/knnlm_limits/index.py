"""Index stage: a FAISS index over the datastore keys, chosen by factory string.

``SQfp16`` by default: the keys are stored as float16 already, so a float16
scalar quantizer loses nothing and the search is exact, like ``Flat``, at half
Flat's memory. ``Flat`` stores float32 copies; ``IVF4096,PQ32`` and the like
suit large stores and are trained on a random sample of keys. Keys are read from
the .npy file in chunks with plain reads (not a memory map, whose pages would
stay resident), so building holds little more than the index itself.
"""

from __future__ import annotations

import faiss
import numpy as np
from tqdm import tqdm

from . import io


class NpyRows:
    """Row ranges of a 2-D .npy file read with plain file reads."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            self.shape, fortran, self.dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran or len(self.shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {self.shape}")

    def __getitem__(self, rows) -> np.ndarray:
        n, dim = self.shape
        row_bytes = dim * self.dtype.itemsize
        with open(self.path, "rb") as fh:
            if isinstance(rows, slice):
                start, stop, _ = rows.indices(n)
                fh.seek(self.offset + start * row_bytes)
                return np.fromfile(fh, dtype=self.dtype, count=(stop - start) * dim).reshape(-1, dim)
            out = np.empty((len(rows), dim), dtype=self.dtype)
            for i, r in enumerate(rows):
                fh.seek(self.offset + int(r) * row_bytes)
                out[i] = np.fromfile(fh, dtype=self.dtype, count=dim)
            return out


def _reserve_codes(index, n: int) -> None:
    """Give a flat-codes index (Flat, SQ, PQ) its final code buffer up front.

    Growing the buffer chunk by chunk reallocates it, holding old and new copies
    at once (up to 2x the index); resizing to the final size and back to zero
    keeps the capacity, so every later add fills it in place.
    """
    if getattr(index, "ntotal", 1) == 0 and hasattr(index, "codes") and hasattr(index, "code_size"):
        index.codes.resize(n * index.code_size)
        index.codes.resize(0)


def build(keys, factory: str, train_sample: int = 100_000, seed: int = 0,
          chunk: int = 16_384, log=None) -> faiss.Index:
    """Index `keys`: a .npy path (read in chunks) or an array."""
    keys = NpyRows(keys) if isinstance(keys, (str, bytes)) or hasattr(keys, "__fspath__") else keys
    n, dim = keys.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(train_sample, n), replace=False))
        index.train(np.asarray(keys[rows], dtype=np.float32))
    _reserve_codes(index, n)
    for start in tqdm(range(0, n, chunk), file=log, mininterval=5, desc="index"):
        index.add(np.asarray(keys[start : start + chunk], dtype=np.float32))
    return index


def write(index: faiss.Index, path) -> None:
    with io.atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read(path, nprobe: int | None = None) -> faiss.Index:
    index = faiss.read_index(str(path))
    if nprobe is not None:
        try:
            faiss.extract_index_ivf(index).nprobe = nprobe
        except RuntimeError:
            pass  # not an IVF index: nothing to probe
    return index
