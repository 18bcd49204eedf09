"""Sliding windows: every token scored once, with at least block_size - stride tokens of context."""

import numpy as np
import pytest
import torch

from knnlm_limits import knnlm, model
from knnlm_limits.tokens import blocks, from_sequences, windows


def _scored_positions(ex):
    """Stream positions each window scores."""
    return [ex.starts[i] + p for i in range(len(ex)) for p in range(ex.score_start[i], ex.sizes[i])]


@pytest.mark.parametrize("n, block, stride", [(100, 16, 4), (101, 16, 5), (64, 16, 16), (17, 16, 1), (10, 16, 8)])
def test_every_token_after_the_first_is_scored_once(n, block, stride):
    ex = windows(np.arange(n), block, stride)
    scored = _scored_positions(ex)
    if stride < block:
        assert sorted(scored) == list(range(1, n))  # each once
        for i in range(len(ex)):
            context = ex.score_start[i]  # tokens of the window before its first scored token
            assert context >= (block - stride if i else 1)
    else:  # consecutive blocks: a block's first token has no context in its block
        assert sorted(scored) == [p for p in range(1, n) if p % block]
    assert (ex.sizes <= block).all() and len(set(scored)) == len(scored)


def test_stride_equal_to_block_is_todays_blocks():
    stream = np.arange(64)
    a, b = windows(stream, 16, 16), blocks(stream, 16)
    assert a.starts.tolist() == b.starts.tolist() and a.sizes.tolist() == b.sizes.tolist()
    assert a.score_start.tolist() == b.score_start.tolist() == [1] * 4


def test_windowed_perplexity_equals_a_token_by_token_reference():
    """Each scored token's log-prob from the windows equals the model's log-prob of it given
    exactly its window's preceding tokens, computed one token at a time."""
    lm = model.build_model(40, 2, 16, 2, 16, seed=0).eval()
    stream = np.random.default_rng(0).integers(0, 40, 45)
    block, stride = 16, 6
    ex = windows(stream, block, stride)
    found, _ = knnlm.lm_and_queries(lm, ex, key=None, batch_tokens=40)
    reference = []
    with torch.no_grad():
        for i in range(len(ex)):
            start = ex.starts[i]
            for p in range(ex.score_start[i], ex.sizes[i]):
                context = torch.as_tensor(stream[start : start + p], dtype=torch.long)[None]
                logp = torch.log_softmax(lm(input_ids=context).logits[0, -1], -1)
                reference.append(logp[stream[start + p]].item())
    assert len(reference) == len(stream) - 1
    np.testing.assert_allclose(found.lm_logprob, reference, atol=1e-5)
    assert knnlm.perplexity(found.lm_logprob) == pytest.approx(np.exp(-np.mean(reference)), rel=1e-6)


def test_examples_round_trip(tmp_path):
    ex = from_sequences([[1, 2, 3], [4, 5]], score_start=[2, 1])
    ex.save(tmp_path / "e.npz")
    again = type(ex).load(tmp_path / "e.npz")
    assert [again[i].tolist() for i in range(2)] == [[1, 2, 3], [4, 5]] and again.score_start.tolist() == [2, 1]
    assert again.n_scored() == 2
