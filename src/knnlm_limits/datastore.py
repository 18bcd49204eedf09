"""Datastore stage: (key, value) for every position of a token stream.

key = the SPEC kNN key of the context (``model.knn_key``), value = the next
token. Keys go to a float16 ``.npy`` memory map and values to an int32 ``.npy``,
batch by batch: the whole key matrix is never held in RAM.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.format import open_memmap
from tqdm import tqdm

from . import io
from .model import check_context, device_of, keys_only
from .tokens import Examples, batches_by_tokens, pad_batch, scored_mask


@torch.no_grad()
def build(model, examples: Examples, keys_path, values_path, key: str = "mlp_input",
          batch_tokens: int = 8192, log=None) -> int:
    """Write the datastore of `examples`; returns its number of entries."""
    model.eval()
    device = device_of(model)
    check_context(model, examples, "datastore examples")
    n = int((examples.lengths() - 1).sum())
    dim = model.config.n_embd
    with io.atomic_path(keys_path) as keys_tmp, io.atomic_path(values_path) as values_tmp:
        keys = open_memmap(keys_tmp, mode="w+", dtype=np.float16, shape=(n, dim))
        values = open_memmap(values_tmp, mode="w+", dtype=np.int32, shape=(n,))
        row = 0
        for idx in tqdm(list(batches_by_tokens(examples, batch_tokens)), file=log, mininterval=5, desc="datastore"):
            ids, _ = pad_batch(examples, idx)
            mask = scored_mask(examples, idx, ids.size(1), all_positions=True)
            batch_keys = keys_only(model, ids.to(device), key)[:, :-1].cpu()[mask]
            m = batch_keys.size(0)
            keys[row : row + m] = batch_keys.to(torch.float16).numpy()
            values[row : row + m] = ids[:, 1:][mask].numpy()
            row += m
        assert row == n, (row, n)
        keys.flush()
        values.flush()
        del keys, values
    return n


def load(keys_path, values_path):
    """Memory-mapped keys (float16) and values (int32)."""
    return np.load(keys_path, mmap_mode="r"), np.load(values_path, mmap_mode="r")
