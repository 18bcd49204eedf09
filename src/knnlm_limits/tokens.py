"""Token examples: a ragged list of token sequences, each a view of one flat array.

Every stage that reads tokens (training, datastore, kNN-LM) takes an Examples.
For a corpus each example is one block or sliding window of the token stream;
for Macondo each is one sentence (or prompt plus answer), so that every
sentence is encoded alone. ``score_start[i]`` is the first position of example
i whose token is scored (predicted from the tokens before it and used as a
training target): 1 for language modelling, the answer's first position for a
prompt or a chat turn, and the first token no earlier window scored for a
sliding window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from . import io


@dataclass
class Examples:
    tokens: np.ndarray  # int32, the flat array every example is a slice of
    starts: np.ndarray  # int64, where example i begins in `tokens`
    sizes: np.ndarray  # int64, its number of tokens
    score_start: np.ndarray  # int64, its first scored position

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.starts[i] : self.starts[i] + self.sizes[i]]

    def lengths(self) -> np.ndarray:
        return self.sizes

    def n_scored(self) -> int:
        return int(np.maximum(self.sizes - self.score_start, 0).sum())

    def save(self, path) -> None:
        io.save_npz(path, tokens=self.tokens, starts=self.starts, sizes=self.sizes, score_start=self.score_start)

    @classmethod
    def load(cls, path) -> "Examples":
        data = io.load_npz(path)
        return cls(data["tokens"], data["starts"], data["sizes"], data["score_start"])


def from_sequences(seqs: Iterable[Sequence[int]], score_start: Sequence[int] | None = None) -> Examples:
    seqs = [np.asarray(s, dtype=np.int32) for s in seqs]
    if any(len(s) < 2 for s in seqs):
        raise ValueError("every example needs at least two tokens (a context and a next token)")
    sizes = np.array([len(s) for s in seqs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if seqs else np.zeros(0, np.int64)
    tokens = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int32)
    starts_scored = np.ones(len(seqs), dtype=np.int64) if score_start is None else np.asarray(score_start, dtype=np.int64)
    return Examples(tokens, starts, sizes, starts_scored)


def save_stream(path, stream: np.ndarray) -> None:
    io.save_npz(path, tokens=np.asarray(stream, dtype=np.int32))


def load_stream(path) -> np.ndarray:
    return io.load_npz(path)["tokens"]


def blocks(stream: np.ndarray, block_size: int) -> Examples:
    """Consecutive, non-overlapping blocks of `block_size` (the tail is dropped): training data."""
    stream = np.asarray(stream, dtype=np.int32)
    n_blocks = len(stream) // block_size
    starts = np.arange(n_blocks, dtype=np.int64) * block_size
    sizes = np.full(n_blocks, block_size, dtype=np.int64)
    return Examples(stream, starts, sizes, np.ones(n_blocks, dtype=np.int64))


def windows(stream: np.ndarray, block_size: int, stride: int | None = None) -> Examples:
    """Sliding windows for evaluation and datastores (Hugging Face's fixed-length recipe).

    Windows of `block_size` tokens start every `stride` tokens; the last one ends
    at the end of the stream. Each window scores only the tokens no earlier
    window scored. With ``stride < block_size`` every token after the first is
    scored exactly once, past the first window with at least
    ``block_size - stride`` tokens of context. ``stride = block_size`` gives
    plain consecutive blocks, as the recipe does with stride = max_length: a
    block's first token has no context in its block and is not scored (1 token
    in block_size).
    """
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride {stride} must be between 1 and the block size {block_size}")
    stream = np.asarray(stream, dtype=np.int32)
    n = len(stream)
    starts, sizes, first_scored = [], [], []
    begin, scored_to = 0, 1  # position 0 has no context: never scored
    while scored_to < n:
        end = min(begin + block_size, n)
        first = max(scored_to - begin, 1)
        if first < end - begin:
            starts.append(begin)
            sizes.append(end - begin)
            first_scored.append(first)
        scored_to = end
        begin += stride
    return Examples(stream, np.asarray(starts, np.int64), np.asarray(sizes, np.int64), np.asarray(first_scored, np.int64))


def pad_batch(examples: Examples, indices: Sequence[int], pad_id: int = 0):
    """(B, T) input ids, right padded, and the (B, T) mask of real tokens.

    Right padding needs no attention mask in a causal LM: no real token sees a pad.
    """
    import torch

    seqs = [examples[i] for i in indices]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=bool)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def scored_mask(examples: Examples, indices: Sequence[int], width: int):
    """(B, width - 1) bool: which next-token targets ids[:, 1:] are scored."""
    import torch

    pos = np.arange(1, width)[None, :]
    lengths = examples.sizes[list(indices)][:, None]
    start = examples.score_start[list(indices)][:, None]
    return torch.from_numpy((pos < lengths) & (pos >= start))


def batches_by_tokens(examples: Examples, max_tokens: int):
    """Consecutive index batches holding at most ~max_tokens tokens each."""
    batch, size = [], 0
    for i, n in enumerate(examples.sizes):
        if batch and size + n > max_tokens:
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += int(n)
    if batch:
        yield batch
