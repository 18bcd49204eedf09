"""The index module's numeric core against independent truths: FAISS's own sizes of a
factory's index, brute-force distances, closed forms of block sizes, and properties
(ties keep the index's order, a search depends on its float32 queries only)."""

import faiss
import numpy as np
import pytest

from knnlm_limits import index


def _faiss_shape(factory: str, d: int) -> tuple[int, int]:
    """(lists, bytes per code) as FAISS builds `factory`: one list for a non-IVF index."""
    built = faiss.index_factory(d, factory)
    try:
        ivf = faiss.extract_index_ivf(built)
        return ivf.nlist, ivf.code_size
    except RuntimeError:
        return 1, built.sa_code_size()


@pytest.mark.parametrize("factory, d", [
    ("IVF8,PQ4", 16), ("IVF8,PQ4x4", 16), ("PQ4", 16), ("PQ5x4", 20), ("IVF8,PQ5x4", 20),
    ("IVF8,SQ8", 16), ("IVF8,SQfp16", 16), ("SQfp16", 16), ("IVF8,Flat", 16), ("Flat", 16),
    ("IVF64_HNSW8,PQ4", 16), ("IVF64,PQ4np", 16), ("IVF64,PQ4x4fs", 16), ("OPQ4,IVF8,PQ4", 16),
])
def test_ivf_shape_is_the_lists_and_code_size_faiss_builds(factory, d):
    """The cost and memory estimates' list count and code bytes are FAISS's own."""
    assert index.ivf_shape(factory, d) == _faiss_shape(factory, d)
