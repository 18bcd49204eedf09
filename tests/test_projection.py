"""Projection (Eq. 2): exact recovery of a reachable target; batched == one at a time."""

import numpy as np
import pytest
import torch

from knnlm_limits import projection
from knnlm_limits.knnlm import perplexity

V, D = 50, 16


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    W = torch.randn(V, D)
    return lambda z: z @ W.T


def test_reachable_target_is_recovered(head):
    torch.manual_seed(1)
    z_true = torch.randn(8, D)
    target = torch.log_softmax(head(z_true), -1)
    z_star, trace = projection.project(head, torch.zeros(8, D), target, steps=3000, lr=0.1)
    assert trace[-1] < 1e-4 < trace[0]
    final = projection.kl_rows(torch.log_softmax(head(z_star), -1), target)
    assert final.max().item() < 1e-4
    y = torch.randint(0, V, (8,), generator=torch.Generator().manual_seed(2))
    got = perplexity(projection.target_logprob(head, z_star, y).numpy())
    want = perplexity(target.gather(-1, y[:, None]).squeeze(-1).numpy())
    assert got == pytest.approx(want, rel=1e-2)


@pytest.mark.parametrize("direction", ["paper", "reverse"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_batched_equals_one_token_alone(head, direction, solver):
    torch.manual_seed(3)
    target = torch.log_softmax(torch.randn(6, V) * 3, -1)
    z0 = torch.randn(6, D)
    batched, _ = projection.project(head, z0, target, steps=60, lr=0.05, solver=solver, direction=direction)
    for i in range(6):
        alone, _ = projection.project(head, z0[i : i + 1], target[i : i + 1], steps=60, lr=0.05, solver=solver, direction=direction)
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_kl_directions_by_hand():
    q = torch.tensor([[0.5, 0.5]]).log()
    p = torch.tensor([[0.9, 0.1]]).log()
    paper = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    reverse = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    assert projection.kl_rows(q, p, "paper").item() == pytest.approx(paper)
    assert projection.kl_rows(q, p, "reverse").item() == pytest.approx(reverse)
    with pytest.raises(ValueError, match="direction"):
        projection.kl_rows(q, p, "sideways")


def test_run_on_a_model_lines_up_with_search_results():
    """projection.run on a tiny GPT-2: the LM column is the model's own log-prob."""
    import faiss

    from knnlm_limits import knnlm, model
    from knnlm_limits.tokens import from_sequences

    lm = model.build_gpt2(60, 2, 16, 2, 16, seed=0).eval()
    rng = np.random.default_rng(0)
    ex = from_sequences(rng.integers(0, 60, size=(4, 10)))
    index = faiss.IndexFlatL2(16)
    found_keys = knnlm.lm_and_queries(lm, ex)["queries"]
    index.add(found_keys)
    values = ex.tokens.reshape(4, 10)[:, 1:].reshape(-1)
    found = knnlm.evaluate(lm, index, values, ex, k=8)
    per_token, traces = projection.run(lm, ex, found, 0.25, 1.0,
                                       dict(tokens=20, steps=5, lr=0.1, solver="adam", direction="paper", batch=8))
    assert len(per_token) == 20
    np.testing.assert_allclose(per_token.lm, found["lm_logprob"][:20], atol=1e-5)
    np.testing.assert_allclose(per_token.knnlm, knnlm.knnlm_logprob(found, 0.25, 1.0)[:20], atol=1e-5)
    assert set(traces.target) == {"f", "f∘g"} and traces.iteration.max() == 5
