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


def test_a_runs_fingerprint_comes_out_the_same_each_time():
    """A killed run resumes only if its rerun's fingerprint is the same: the rows of the key
    file it probes (4,096 of 5,000 here) are a seeded sample, not a fresh one."""
    keys = np.arange(10_000, dtype=np.float32).reshape(5000, 2)
    a, b = (memory_mlp.MemoryData(keys, np.zeros(5000, np.int32)).fingerprint_arrays() for _ in range(2))
    assert len(a[3]) == 4096 and all(np.array_equal(x, y) for x, y in zip(a, b))


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


# ---------------------------------------------------------------- the train_memory job, in process

VOCAB, WIDTH, SHARD_SIZES, K = 40, 8, (70, 50), 4
TRAIN = {"epochs": 2.0, "batch_size": 32, "lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.01, "save_every": None,
         "seed": 3}
JOBS = {  # the imitation memory through IVF shard indexes re-ranked; keys to values searched exactly
    "imitation": {"alpha": 0.5, "head": "lm", "index": "IVF4,Flat", "search": {"k": K, "nprobe": 2, "rerank": True}},
    "values": {"alpha": 0.0, "head": "lm_frozen", "index": None, "search": {"k": K, "nprobe": 1, "rerank": False}},
}


@pytest.fixture
def memory_job(tmp_path, name):
    """train_and_evaluate as scripts/memory.py calls it for the job `name`, on a datastore of 120
    entries in two shards, 30 of them with a kNN target, an LM of width 8, and 20 / 30 query
    keys; the searches it times and the GPU searches it asks for recorded: (inputs, outputs,
    calls). Function-scoped, so that every test runs the job: mutmut maps a function to the tests
    that called it, and a module-scoped fixture's calls count for its first test alone."""
    root = tmp_path
    rng = np.random.default_rng(5)
    n = sum(SHARD_SIZES)
    keys = rng.standard_normal((n, WIDTH)).astype(np.float16)
    values = rng.integers(0, VOCAB, n).astype(np.int32)
    key_files, value_files, manifests = [], [], []
    for s, (a, b) in enumerate(zip(np.cumsum((0,) + SHARD_SIZES)[:-1], np.cumsum(SHARD_SIZES))):
        folder = root / f"shard-{s}"
        folder.mkdir()
        np.save(folder / "keys.npy", keys[a:b])
        np.save(folder / "values.npy", values[a:b])
        shards.write_manifest(folder / "shard.json", s, 2, int(a), int(b - a), (s, s + 1))
        key_files.append(folder / "keys.npy")
        value_files.append(folder / "values.npy")
        manifests.append(folder / "shard.json")
    rows = memory.kl_sample(n, 30, seed=1)
    exact = index.Searcher.in_memory(keys, {"exact_index": "exact", "exact_max_keys": 10**9, "nprobe": 1,
                                            "rerank": False})
    answer = shards.answer(exact, values, keys[rows].astype(np.float32), K + 1, 0)
    memory.write_kl_targets(root / "kl", rows, [answer], K, 1.0)
    lm_model.build_model(VOCAB, 1, WIDTH, 2, 16, seed=2).save_pretrained(root / "lm")
    queries, found = {}, {}
    for split, m in (("valid", 20), ("test", 30)):
        queries[split] = root / f"{split}_queries.npy"
        np.save(queries[split], rng.standard_normal((m, WIDTH)).astype(np.float16))
        found[split] = root / f"{split}.npz"
        SearchResults(targets=rng.integers(0, VOCAB, m), lm_logprob=np.zeros(m, np.float32),
                      example=np.arange(m)).save(found[split])
    index.write_trained(root / "trained", key_files, "IVF4,Flat", 10**6)
    index_dirs = [root / f"shard-{s}" / "index" for s in range(2)]
    for key_file, folder in zip(key_files, index_dirs):
        index.write_shard(folder, root / "trained", key_file)
    inputs = {"keys": keys, "values": values, "kl": root / "kl", "lm": root / "lm", "queries": queries,
              "found": found}
    with pytest.MonkeyPatch.context() as patch:
        seen = []
        search = shards.ShardedSearch.search

        def recorded(self, q, k):
            seen.append((self.kind, np.array(q), k, [searcher.threads for searcher in self.searchers]))
            return search(self, q, k)
        patch.setattr(shards.ShardedSearch, "search", recorded)
        asked, on_gpu = [], shards.gpu_search

        def gpu_search(sharded, k):
            asked.append((sharded.kind, k))
            return on_gpu(sharded, k)
        patch.setattr(shards, "gpu_search", gpu_search)
        job = JOBS[name]
        out = {part: root / name / part for part in ("model", "logprobs.npz", "footprint.csv", "costs.csv")}
        if name == "values":  # as on a GPU machine, the memory kept on the CPU: the GPU pair's row too
            patch.setattr(torch.cuda, "is_available", lambda: True)
            patch.setattr(lm_model, "best_device", lambda: torch.device("cpu"))
        memory_mlp.train_and_evaluate(
            key_files, value_files, manifests, root / "kl" if job["alpha"] > 0 else None, root / "lm", queries,
            found, index_dirs if job["index"] else None, out["model"], out["logprobs.npz"], out["footprint.csv"],
            out["costs.csv"], root / name / "work", {"layers": 1, "expansion": 2, "head": job["head"]},
            job["alpha"], TRAIN, job["search"], 5, 1)
    return inputs, out, {"search": seen, "gpu_search": asked}


def _gpu_pair(name):
    """Whether the job's costs have a GPU row: on a GPU machine, and for 'values' anywhere."""
    return name == "values" or torch.cuda.is_available()


@pytest.mark.parametrize("name", JOBS)
def test_the_job_trains_the_memory_fit_trains_on_the_whole_datastore(memory_job, name):
    """The published memory: the one fit() trains in memory on the shards' keys and values laid
    end to end (and the kNN targets where the memory imitates), from the LM's head, with the
    job's shape, seed, epochs, batch, warm-up and alpha."""
    inputs, out, _ = memory_job
    job = JOBS[name]
    lm = lm_model.load_lm(str(inputs["lm"]))
    device = "cpu" if name == "values" else best_device()
    want = memory_mlp.build(WIDTH, VOCAB, 1, 2, job["head"], lm, TRAIN["seed"]).to(device)
    kl = memory.kl_targets(inputs["kl"]) if job["alpha"] > 0 else ()
    data = memory_mlp.MemoryData(inputs["keys"], inputs["values"], *kl)
    memory_mlp.fit(want, data, memory_mlp.settings(len(data), **TRAIN), job["alpha"])
    got = memory_mlp.MemoryMLP.from_pretrained(str(out["model"]))
    assert got.config.layers == 1 and got.config.expansion == 2
    # the same steps in the same process: equal on a CPU (tolerance for a GPU's atomics)
    for key, value in want.state_dict().items():
        torch.testing.assert_close(got.state_dict()[key], value.cpu(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", JOBS)
def test_the_jobs_log_probs_are_its_memorys_softmax_at_the_targets(memory_job, name):
    """log p_memory(target | query key) of every evaluated position, dense float64 log-softmax of
    the published memory at the split's query keys."""
    inputs, out, _ = memory_job
    model = memory_mlp.MemoryMLP.from_pretrained(str(out["model"]))
    written = io.load_npz(out["logprobs.npz"])
    assert set(written) == {"valid", "test"}
    for split in ("valid", "test"):
        q = torch.from_numpy(np.load(inputs["queries"][split]).astype(np.float32))
        log_p = torch.log_softmax(model(q).double(), 1).detach().numpy()
        targets = SearchResults.load(inputs["found"][split]).targets
        # float32 logits of size ~1: rounding ~1e-6
        np.testing.assert_allclose(written[split], log_p[np.arange(len(targets)), targets], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", JOBS)
def test_the_jobs_footprint_in_closed_form(memory_job, name):
    """Parameters and bytes from the published memory's tensors (its head not stored when it is
    the LM's own), ceil(epochs n / batch) steps, 6 FLOPs a parameter an entry an epoch less 2
    a parameter not trained; the kNN targets' search FLOPs by hand: none without targets, else
    each target's key in both IVF4 shards, 2 d a coarse centroid, 2 d a key of the 2 of 4 lists
    probed, and 2 d a re-ranked neighbour (k + 1) a shard."""
    inputs, out, _ = memory_job
    job = JOBS[name]
    model = memory_mlp.MemoryMLP.from_pretrained(str(out["model"]))
    head = model.head.weight.numel()
    body = sum(p.numel() for p in model.parameters()) - head
    stored = body + (0 if job["head"] == "lm_frozen" else head)
    trained = stored  # the frozen head neither stored nor trained
    n, d = sum(SHARD_SIZES), WIDTH
    per_target = 2 * (2 * 4 * d) + n * (2 / 4) * (2 * d) + 2 * (2 * d * (K + 1))
    footprint = pd.read_csv(out["footprint.csv"])
    assert footprint.to_dict("records") == [{
        "params_body": body, "params_head": head, "bytes_fp32": 4 * stored, "bytes_fp16": 2 * stored,
        "bytes_fp32_with_head": 4 * (body + head), "bytes_fp32_without_head": 4 * body,
        "train_steps": math.ceil(TRAIN["epochs"] * n / TRAIN["batch_size"]),
        "train_flops": n * TRAIN["epochs"] * (4 * (body + head) + 2 * trained),
        "target_search_flops": 30 * per_target if job["alpha"] > 0 else 0.0}]


@pytest.mark.parametrize("name", JOBS)
def test_the_jobs_query_costs_time_its_own_search_and_memory(memory_job, name):
    """One row a device (the CPU; on a GPU machine the GPU too, or why not), named by the
    search's kind; the search timed is the job's sharded search with the job's threads, once
    untimed and twice timed, for k neighbours of the first `timing_queries` test query keys in
    float32."""
    inputs, out, calls = memory_job
    job = JOBS[name]
    costs = pd.read_csv(out["costs.csv"])
    notes = costs.note.astype(object).fillna("")  # an empty note is read as NaN
    assert list(costs.columns) == ["queries", "search", "search_device", "search_threads", "search_seconds_per_1000",
                                   "memory_device", "memory_threads", "memory_seconds_per_1000", "note"]
    devices = ["cpu", "cuda"] if _gpu_pair(name) else ["cpu"]
    assert list(costs.search_device) == devices and list(costs.memory_device) == devices
    kind = job["index"] or "exact"
    assert (costs.search == kind).all() and (costs.queries == 5).all()
    assert (costs.search_threads == 1).all() and (costs.memory_threads == 1).all()
    cpu = costs.iloc[0]
    assert notes[0] == "" and 0 < cpu.search_seconds_per_1000 < 1e4 and 0 < cpu.memory_seconds_per_1000 < 1e4
    if _gpu_pair(name):
        gpu, why = costs.iloc[1], index.faiss_gpu_unavailable()
        if why is None and job["search"]["rerank"]:
            why = "its exact re-ranking reads the key file on the host"
        if why is None:  # FAISS's GPU build, on a GPU: timed there
            assert notes[1] == "" and gpu.search_seconds_per_1000 > 0 and gpu.memory_seconds_per_1000 > 0
        else:
            assert notes[1] == f"cuda pair skipped: {why}"
            assert np.isnan(gpu.search_seconds_per_1000) and np.isnan(gpu.memory_seconds_per_1000)
    want = np.load(inputs["queries"]["test"])[:5].astype(np.float32)
    assert calls["gpu_search"] == ([(kind, K)] if _gpu_pair(name) else [])
    assert len(calls["search"]) == 3
    for searched_kind, q, k, threads in calls["search"]:
        assert searched_kind == kind and k == K and q.dtype == np.float32
        assert threads == [1, 1]  # each shard's re-ranking reads the key file with the job's threads
        np.testing.assert_array_equal(q, want)


# ---------------------------------------------------------------- the more_training job's step count


@pytest.mark.parametrize("control_budget, head", [("epochs", "lm"), ("compute", "lm_frozen")])
def test_the_controls_steps_are_the_memorys_epochs_or_its_compute_with_a_frozen_head(tmp_path, monkeypatch,
                                                                                    control_budget, head):
    """more_training's added steps in closed form. 'epochs': the memory's epochs over the
    training split's tokens, ceil(epochs tokens / tokens a step). 'compute' with the LM's frozen
    head: the memory's training, 4 FLOPs a parameter an entry an epoch and 2 more a trained (body)
    parameter, plus its kNN targets' exact search, 2 n^2 d, at 6 FLOPs an LM parameter a token.
    The continuation itself (train.train, stood in for here) is test_memory's."""
    from knnlm_limits.tokens import save_stream

    vocab, d, block, batch_size, n_entries, epochs, step = 90, 16, 4, 2, 300, 2.0, 3
    rng = np.random.default_rng(4)
    save_stream(tmp_path / "train.npz", rng.integers(0, vocab, 250))
    splits = {split: tmp_path / f"{split}.npz" for split in ("valid", "test")}
    for path in splits.values():
        save_stream(path, rng.integers(0, vocab, 3 * block))
    lm = lm_model.build_model(vocab, 1, d, 2, 16, seed=1)
    lm.save_pretrained(tmp_path / "lm")
    torch.save({}, tmp_path / "lm" / "optimizer.pt")
    shards.write_manifest(tmp_path / "shard.json", 0, 1, 0, n_entries, (0, 1))
    started = []
    monkeypatch.setattr(train, "train", lambda model, examples, s, out_dirs, work_dir, log=None, start=None:
                        started.append((s, out_dirs, start)))
    target_search = {"n": None, "k": 8, "nprobe": 1, "rerank": False, "shards": 1, "kind": "exact"}
    memory_mlp.more_training(tmp_path / "lm", tmp_path / "train.npz", [tmp_path / "shard.json"], splits,
                             tmp_path / "more", tmp_path / "more.npz", tmp_path / "work", step,
                             {"batch_size": batch_size, "lr": 1e-3, "warmup_steps": 0}, 5,
                             {"block_size": block, "stride": 2}, {"layers": 1, "expansion": 2, "head": head},
                             {"control_budget": control_budget, "epochs": epochs, "target_search": target_search},
                             4096)
    tokens_per_step = batch_size * block
    lm_params = sum(p.numel() for p in lm.parameters())
    mem = memory_mlp.build(d, vocab, 1, 2, head="random")
    head_params = mem.head.weight.numel()
    body = sum(p.numel() for p in mem.parameters()) - head_params

    def compute_steps(trained):
        flops = n_entries * epochs * (4 * (body + head_params) + 2 * trained) + 2 * n_entries**2 * d
        return math.ceil(flops / (6 * lm_params * tokens_per_step))
    by_epochs = math.ceil(epochs * 250 / tokens_per_step)
    extra = by_epochs if control_budget == "epochs" else compute_steps(body)
    # the case tells the budgets apart, and a head counted as trained
    assert len({by_epochs, compute_steps(body), compute_steps(body + head_params)}) == 3
    assert int(io.load_npz(tmp_path / "more.npz")["extra_steps"]) == extra
    [(s, out_dirs, start)] = started
    assert s.checkpoints == [step + extra] and out_dirs == {step + extra: tmp_path / "more"} and start.step == step
