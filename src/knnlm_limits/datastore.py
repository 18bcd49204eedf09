"""Datastore stage: (key, value) for every scored position of a set of examples.

key = the SPEC kNN key of the context (``model.knn_key``), value = the next
token. For a corpus, the examples are sliding windows, so each position is
stored once. Keys go to a float16 ``.npy`` memory map and values to an int32
``.npy``, batch by batch: the whole key matrix is never held in RAM. Beside
them, an int64 ``.npy`` of positions says where each entry came from: the
index in the examples' token array of its value (its next token), so that
``tokens[position] == value`` and the context is the tokens before it. Only
the inspection of neighbours reads it, never the search. Small datastores
(Macondo's) are built in memory by the job that searches them.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from tqdm import tqdm

from . import disk, io
from .model import check_context, device_of, keys_only
from .tokens import Examples, batches_by_tokens, pad_batch, scored_mask

NPY_HEADER = 4096  # bytes, more than any .npy header of a 2-D array


@torch.no_grad()
def _batches(model, examples: Examples, key: str, batch_tokens: int, log=None):
    """(float16 keys, int32 values, int64 positions) of each batch of examples, in order."""
    model.eval()
    device = device_of(model)
    check_context(model, examples, "datastore examples")
    for idx in tqdm(list(batches_by_tokens(examples, batch_tokens)), file=log, mininterval=5, desc="datastore"):
        ids, _ = pad_batch(examples, idx)
        mask = scored_mask(examples, idx, ids.size(1))
        keys = keys_only(model, ids.to(device), key)[:, :-1]
        # masked and narrowed to float16 on the model's device (through float32, as
        # ever, for the same numbers): only the scored rows cross to the host
        keys = keys[mask.to(device)].float().to(torch.float16).cpu()
        # column c of the (B, T - 1) mask predicts token c + 1 of its example
        positions = (examples.starts[idx][:, None] + 1 + np.arange(mask.shape[1])[None, :])[mask.numpy()]
        yield keys.numpy(), ids[:, 1:][mask].numpy().astype(np.int32), positions.astype(np.int64)


def build(model, examples: Examples, keys_path, values_path, positions_path=None, key: str = "mlp_input",
          batch_tokens: int = 8192, log=None) -> int:
    """Write the datastore of `examples` to .npy files (keys, values and, if a path is
    given, positions); returns its number of entries."""
    n = examples.n_scored()
    dim = model.config.hidden_size
    with (io.atomic_path(keys_path) as keys_tmp, io.atomic_path(values_path) as values_tmp,
          io.atomic_path(positions_path) if positions_path else contextlib.nullcontext() as positions_tmp):
        # the files are written as the job goes: a disk too small would fail mid-job. The
        # values and positions count on the keys' disk too, in case it is theirs.
        key_bytes, value_bytes = n * dim * 2 + NPY_HEADER, n * 4 + NPY_HEADER
        position_bytes = n * 8 + NPY_HEADER if positions_path else 0
        disk.require_free_space(keys_tmp, key_bytes + value_bytes + position_bytes, "the datastore's keys and values")
        disk.require_free_space(values_tmp, value_bytes, "the datastore's values")
        if positions_tmp:
            disk.require_free_space(positions_tmp, position_bytes, "the datastore's positions")
        # plain sequential writes, not a memory map: written pages of a map stay in the job's
        # RSS (measured: half the key bytes at 400k keys), a file's go to the page cache
        with contextlib.ExitStack() as files:
            keys = files.enter_context(io.NpyWriter(keys_tmp, np.float16, (n, dim)))
            values = files.enter_context(io.NpyWriter(values_tmp, np.int32, (n,)))
            positions = files.enter_context(io.NpyWriter(positions_tmp, np.int64, (n,))) if positions_tmp else None
            for batch_keys, batch_values, batch_positions in _batches(model, examples, key, batch_tokens, log):
                keys.write(batch_keys)
                values.write(batch_values)
                if positions is not None:
                    positions.write(batch_positions)
            assert keys.rows == values.rows == n, (keys.rows, values.rows, n)
    return n


def in_memory(model, examples: Examples, key: str = "mlp_input", batch_tokens: int = 8192):
    """(float16 keys, int32 values) of a small datastore, as arrays."""
    parts = list(_batches(model, examples, key, batch_tokens))  # positions unused: nobody inspects them
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load(keys_path, values_path):
    """Memory-mapped keys (float16) and values (int32)."""
    return np.load(keys_path, mmap_mode="r"), np.load(values_path, mmap_mode="r")
