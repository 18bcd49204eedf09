"""Token examples: a ragged list of token sequences stored as flat arrays.

Every stage that reads tokens (training, datastore, kNN-LM) takes an Examples.
For a corpus each example is one block of the token stream; for Macondo each is
one sentence (or prompt plus answer), so that every sentence is encoded alone.
``score_start[i]`` is the first position of example i whose token is scored
(predicted from the tokens before it): 1 for language modelling, the answer's
first position for a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from . import io


@dataclass
class Examples:
    tokens: np.ndarray  # int32, all examples concatenated
    offsets: np.ndarray  # int64, len(examples) + 1
    score_start: np.ndarray  # int64, first scored position of each example

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def save(self, path) -> None:
        io.save_npz(path, tokens=self.tokens, offsets=self.offsets, score_start=self.score_start)

    @classmethod
    def load(cls, path) -> "Examples":
        data = io.load_npz(path)
        return cls(data["tokens"], data["offsets"], data["score_start"])


def from_sequences(seqs: Iterable[Sequence[int]], score_start: Sequence[int] | None = None) -> Examples:
    seqs = [np.asarray(s, dtype=np.int32) for s in seqs]
    if any(len(s) < 2 for s in seqs):
        raise ValueError("every example needs at least two tokens (a context and a next token)")
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    tokens = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int32)
    starts = np.ones(len(seqs), dtype=np.int64) if score_start is None else np.asarray(score_start, dtype=np.int64)
    return Examples(tokens, offsets, starts)


def blocks(stream: np.ndarray, block_size: int, max_tokens: int | None = None) -> Examples:
    """Cut a token stream into consecutive blocks of `block_size` (the tail is dropped)."""
    stream = np.asarray(stream, dtype=np.int32)
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n_blocks = len(stream) // block_size
    offsets = np.arange(n_blocks + 1, dtype=np.int64) * block_size
    return Examples(stream[: n_blocks * block_size].copy(), offsets, np.ones(n_blocks, dtype=np.int64))


def pad_batch(examples: Examples, indices: Sequence[int], pad_id: int = 0):
    """(B, T) input ids, right padded, and the (B, T) mask of real tokens.

    Right padding needs no attention mask in a causal LM: no real token sees a pad.
    """
    seqs = [examples[i] for i in indices]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=bool)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def scored_mask(examples: Examples, indices: Sequence[int], width: int, all_positions: bool = False):
    """(B, width - 1) bool: which next-token targets ids[:, 1:] are scored."""
    pos = np.arange(1, width)[None, :]
    lengths = examples.lengths()[list(indices)][:, None]
    start = 1 if all_positions else examples.score_start[list(indices)][:, None]
    return torch.from_numpy((pos < lengths) & (pos >= start))


def batches_by_tokens(examples: Examples, max_tokens: int):
    """Consecutive index batches holding at most ~max_tokens tokens each."""
    lengths = examples.lengths()
    batch, size = [], 0
    for i, n in enumerate(lengths):
        if batch and size + n > max_tokens:
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += int(n)
    if batch:
        yield batch
