"""Index stage: a FAISS index over the datastore keys, chosen by factory string.

``Flat`` (exact) by default; ``IVF4096,PQ32`` and the like for large stores,
trained on a random sample of keys. Keys are added in float32 chunks read from
the float16 memory map, so building never holds the key matrix twice.
"""

from __future__ import annotations

import faiss
import numpy as np
from tqdm import tqdm

from . import io


def build(keys: np.ndarray, factory: str, train_sample: int = 100_000, seed: int = 0,
          chunk: int = 65_536, log=None) -> faiss.Index:
    n, dim = keys.shape
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(train_sample, n), replace=False))
        index.train(np.asarray(keys[rows], dtype=np.float32))
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
