"""memory_mlp's numeric core against independent truth: the network as its docstring writes
it, the fused loss against a dense float64 softmax, a batch's kNN targets read by brute
force, the epoch order rebuilt from its description, the step counts in closed form, the
query timings on a clock whose readings are known, and the train_memory and more_training
jobs run in process on tiny files, their outputs recomputed."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from knnlm_limits import index, io, memory, memory_mlp, shards, train
from knnlm_limits import model as lm_model
from knnlm_limits.knnlm import SearchResults
from knnlm_limits.model import best_device

# ---------------------------------------------------------------- the network


def _layer_norm(x, norm):
    mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    return (x - mu) / np.sqrt(var + norm.eps) * _np(norm.weight) + _np(norm.bias)


def _np(t):
    return t.detach().double().numpy()


def test_a_memory_is_the_documented_residual_pre_norm_mlp():
    """h_l = h_{l-1} + W2 gelu(W1 LN(h_{l-1})), logits W_out LN(h_L), in float64 by hand, every
    parameter (norms and biases too) moved off its initial value."""
    model = memory_mlp.build(6, 9, 2, 3, head="random", seed=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    keys = np.random.default_rng(0).standard_normal((5, 6))
    erf = np.vectorize(math.erf)
    h = keys
    for block in model.blocks:
        up = _layer_norm(h, block.norm) @ _np(block.up.weight).T + _np(block.up.bias)
        gelu = 0.5 * up * (1 + erf(up / math.sqrt(2)))  # exact (erf) GELU, torch's default
        h = h + gelu @ _np(block.down.weight).T + _np(block.down.bias)
    want = _layer_norm(h, model.norm) @ _np(model.head.weight).T
    got = model(torch.from_numpy(keys).float()).detach().double().numpy()
    # float32 against float64 on logits of size ~10: rounding ~1e-5 at most; a flipped
    # residual sign moves them by O(1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head", ["lm", "lm_frozen"])
def test_a_head_from_the_lm_starts_as_its_output_matrix(head):
    """Both LM heads start as the LM's output matrix; only 'lm' trains it."""
    lm_head = torch.nn.Linear(12, 50, bias=False)
    lm = torch.nn.Module()
    lm.get_output_embeddings = lambda: lm_head
    mem = memory_mlp.build(12, 50, 1, 2, head=head, lm=lm)
    assert torch.equal(mem.head.weight, lm_head.weight)
    assert mem.head.weight.requires_grad == (head == "lm")


# ---------------------------------------------------------------- the fused loss


def _dense_loss(z, weight, targets, weights):
    """sum_ij w_ij (-log softmax(z W^T)_i[t_ij]) over t_ij >= 0, in float64 through autograd."""
    log_p = torch.log_softmax(z.double() @ weight.double().t(), 1)
    on = targets >= 0
    picked = log_p.gather(1, targets.clamp(min=0))
    return -(torch.where(on, weights.double(), 0.0) * picked).sum()


def test_the_fused_loss_and_its_gradients_are_the_dense_softmaxs():
    """SparseTargetCrossEntropy in chunks of 3 rows (8 rows, keys of width 3), backpropagated
    from 2.5 x the loss: its value and both gradients equal autograd through a dense float64
    log-softmax. Row 0's logits sit ~200 above every other row's, so a max taken over the whole
    chunk instead of each row would underflow the other rows' softmax to 0 (a log of 0)."""
    rng = np.random.default_rng(3)
    n, d, vocab = 8, 3, 13
    z0 = rng.standard_normal((n, d))
    z0[0] = [100.0, 0.0, 0.0]
    z0[1:, 0] = 0.0  # the other rows' logits stay small
    w0 = rng.standard_normal((vocab, d))
    w0[4, 0] = 2.0  # row 0's logit of token 4: 200
    targets = torch.from_numpy(rng.integers(-1, vocab, (n, 3)))
    targets[:, 0] = torch.from_numpy(rng.integers(0, vocab, n))
    weights = torch.from_numpy(rng.random((n, 3)).astype(np.float32))
    got = {}
    for name, fused in (("fused", True), ("dense", False)):
        z = torch.tensor(z0, dtype=torch.float32, requires_grad=True)
        weight = torch.tensor(w0, dtype=torch.float32, requires_grad=True)
        loss = (memory_mlp.SparseTargetCrossEntropy.apply(z, weight, targets, weights, 3) if fused
                else _dense_loss(z, weight, targets, weights))
        (2.5 * loss).backward()
        got[name] = (loss.item(), z.grad.double(), weight.grad.double())
    # float32 logits up to 200 carry rounding ~2e-5; a dropped chunk, a chunk's total or
    # gradient in place of the sum, or a gradient divided by 2.5, are off by O(1)
    assert got["fused"][0] == pytest.approx(got["dense"][0], rel=1e-5, abs=1e-4)
    for a, b in zip(got["fused"][1:], got["dense"][1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- a batch's entries and targets


def test_a_batch_holds_each_rows_knn_target_by_brute_force():
    """MemoryData.batch against a loop over the batch's rows: keys and values of the rows; a
    kNN target for each row in the sample that has a neighbour (token 0 included, -1 none),
    its float16 weights normalised in float64 to sum to 1; sum q log q of each target."""
    rng = np.random.default_rng(2)
    n, d = 12, 3
    keys = rng.standard_normal((n, d)).astype(np.float16)
    values = rng.integers(0, 9, n).astype(np.int32)
    kl_rows = np.array([0, 3, 4, 7, 11])  # the datastore's first and last entries among them
    kl_values = np.array([[0, 2, 2, -1],  # token 0, a value twice
                          [-1, -1, -1, -1],  # no neighbour at all: no target
                          [5, 1, -1, -1],
                          [3, 4, 6, 0],
                          [1, -1, 2, 3]])
    kl_weights = np.array([[0.5, 0.25, 0.25, 0.0],  # sums to 1 exactly
                           [0.3, 0.3, 0.2, 0.2],
                           [0.2, 0.6, 0.1, 0.1],  # weight stored at a missing neighbour
                           [1.0, 1.0, 1.0, 1.0],  # sums to 4
                           [0.1, 0.5, 0.2, 0.2]], dtype=np.float16)
    data = memory_mlp.MemoryData(keys, values, kl_rows, kl_values, kl_weights)
    rows = np.array([0, 2, 3, 4, 5, 11])
    b = memory_mlp.MemoryData.batch(data, rows, "cpu")
    np.testing.assert_array_equal(b.keys.numpy(), keys[rows].astype(np.float32))
    np.testing.assert_array_equal(b.values.numpy(), values[rows])
    want_at, want_values, want_weights, want_neg_entropy = [], [], [], []
    for at, row in enumerate(rows):
        if row not in kl_rows:
            continue
        j = int(np.flatnonzero(kl_rows == row)[0])
        w = np.where(kl_values[j] >= 0, kl_weights[j].astype(np.float64), 0.0)
        if w.sum() == 0:
            continue
        w /= w.sum()
        q = {}
        for v, wt in zip(kl_values[j], w):
            if v >= 0 and wt > 0:
                q[v] = q.get(v, 0.0) + wt
        want_at.append(at)
        want_values.append(kl_values[j])
        want_weights.append(w)
        want_neg_entropy.append(sum(p * math.log(p) for p in q.values()))
    assert want_at == [0, 3, 5]  # the fixture's own check: rows 2 and 5 have none, row 3 no neighbour
    np.testing.assert_array_equal(b.kl.numpy(), want_at)
    np.testing.assert_array_equal(b.kl_values.numpy(), np.array(want_values))
    # weights normalised in float64, then float32: float32 rounding (6e-8) only; normalised in
    # float16 they would be off by ~1e-4
    np.testing.assert_allclose(b.kl_weights.numpy(), np.array(want_weights), rtol=2e-7, atol=0)
    np.testing.assert_allclose(b.kl_neg_entropy.numpy(), want_neg_entropy, rtol=1e-12)


def test_a_batch_without_knn_targets_has_none():
    data = memory_mlp.MemoryData(np.ones((4, 2), np.float16), np.arange(4))
    b = data.batch(np.array([1, 3]), "cpu")
    assert len(b.kl) == 0 and b.kl_values.shape[0] == 0 and len(b.kl_neg_entropy) == 0


# ---------------------------------------------------------------- the epoch order


def _documented_order(n, block, blocks, seed, epoch):
    """An epoch's entries as batch_rows' docstring orders them: blocks of `block` consecutive
    entries in a seeded order (rng [seed, epoch]); each run of `blocks` of them shuffled
    together (rng [seed, epoch, group])."""
    starts = np.arange(0, n, block)
    order = np.random.default_rng([seed, epoch]).permutation(len(starts))
    out = []
    for group, first in enumerate(range(0, len(order), blocks)):
        rows = np.concatenate([np.arange(starts[b], min(starts[b] + block, n)) for b in order[first:first + blocks]])
        out.append(rows[np.random.default_rng([seed, epoch, group]).permutation(len(rows))])
    return np.concatenate(out)


@pytest.mark.parametrize("n, block, blocks, batch_size, seed", [
    (1000, 64, 3, 100, 4), (203, 16, 1, 37, 0), (203, 16, 2, 50, 7), (50, 64, 64, 16, 1)])
def test_the_steps_read_the_documented_epoch_order_in_batches(n, block, blocks, batch_size, seed):
    """Step i reads entries i B .. (i + 1) B - 1 of the epochs' orders laid end to end, sorted;
    batches that straddle an epoch's end included (B does not divide n)."""
    s = train.TrainSettings(checkpoints=[1], batch_size=batch_size, seed=seed)
    stream = np.concatenate([_documented_order(n, block, blocks, seed, epoch) for epoch in range(3)])
    for step in range(len(stream) // batch_size):
        want = np.sort(stream[step * batch_size:(step + 1) * batch_size])
        np.testing.assert_array_equal(memory_mlp.batch_rows(step, n, s, block, blocks), want)


# ---------------------------------------------------------------- training settings


@pytest.mark.parametrize("n, epochs, batch_size, warmup, steps, warm", [
    (10, 1.0, 32, 0, 1, 0),  # fewer entries than a batch: one step
    (1000, 0.55, 32, 0, 18, 0),  # ceil(550 / 32)
    (1000, 1.0, 10, 5, 100, 5),
    (1000, 1.0, 10, 10, 100, 10),  # exactly a tenth
    (250, 1.0, 10, 5, 25, 2),  # at most a tenth of 25 steps, rounded down
])
def test_a_memorys_steps_and_warm_up_in_closed_form(n, epochs, batch_size, warmup, steps, warm):
    s = memory_mlp.settings(n, epochs, batch_size, warmup, lr=1e-3, seed=0)
    assert (s.total_steps, s.checkpoints, s.batch_size) == (steps, [steps], batch_size)
    assert s.warmup_steps == warm and isinstance(s.warmup_steps, int)


# ---------------------------------------------------------------- query timings on a known clock


class Clock:
    """time.perf_counter's stand-in: it reads `now`, which the timed calls advance by known
    amounts (far from 0: a start added instead of subtracted would show)."""

    def __init__(self, search, forward):
        self.now, self.search, self.forward = 1000.0, iter(search), iter(forward)

    def __call__(self):
        return self.now


def _timed(monkeypatch, search_costs, forward_costs):
    clock = Clock(search_costs, forward_costs)
    monkeypatch.setattr(memory_mlp.time, "perf_counter", clock)
    model = memory_mlp.build(8, 30, 1, 2, head="random")

    def advance(*_):  # one more call than the costs given fails (StopIteration)
        clock.now += next(clock.forward)
    model.register_forward_hook(advance)

    def search(placed):
        clock.now += next(clock.search)
    return model, search


@pytest.mark.parametrize("n_queries", [4, 1])
def test_a_timing_is_the_best_of_two_timed_calls_per_1000_queries(monkeypatch, n_queries):
    """One untimed call, then two timed (query_costs' default), the faster one kept, per 1,000
    queries: here 0.3 s and 0.2 s for n queries."""
    model, search = _timed(monkeypatch, [0.01, 0.5, 0.3], [0.02, 0.2, 0.25])
    queries = np.zeros((n_queries, 8), np.float32)
    rows = memory_mlp.query_costs({"cpu": search, "cuda": "no GPU here"}, model, queries, 1)
    assert rows[0]["search_seconds_per_1000"] == pytest.approx(0.3 * 1000 / n_queries, rel=1e-9)
    assert rows[0]["memory_seconds_per_1000"] == pytest.approx(0.2 * 1000 / n_queries, rel=1e-9)
    # a skipped pair's row has the timed row's columns, its devices and threads
    assert list(rows[1]) == list(rows[0])
    assert {k: rows[1][k] for k in ("search_device", "search_threads", "memory_device", "memory_threads")} == {
        "search_device": "cuda", "search_threads": 1, "memory_device": "cuda", "memory_threads": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a GPU's queue: needs a GPU")
def test_a_gpu_timing_drains_the_queue_inside_the_timer(monkeypatch):
    """On a GPU each call's timing ends only after torch.cuda.synchronize (launches return
    before the work is done): a drain the clock sees, 0.7 s here, is in the timing."""
    model, search = _timed(monkeypatch, [0.0] * 3, [0.0] * 3)
    clock = memory_mlp.time.perf_counter
    real = torch.cuda.synchronize

    def synchronize(device=None):
        real(device)
        clock.now += 0.7
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    row = memory_mlp.time_queries(search, model, np.zeros((10, 8), np.float32), "cuda", 1)
    assert row["search_seconds_per_1000"] == pytest.approx(0.7 * 100, rel=1e-9)
    assert row["memory_seconds_per_1000"] == pytest.approx(0.7 * 100, rel=1e-9)

