"""The parametric memory: an MLP from a datastore key to a next-token distribution.

In place of retrieval (Chiang et al., NAACL 2024; MLP Memory, Wei et al. 2025), an MLP
reads the kNN key of a context and is trained on the datastore's (key, value) entries:

    h_0 = key,  h_l = h_{l-1} + W2_l gelu(W1_l LN_l(h_{l-1}))      (residual pre-norm blocks)
    p_MLP(. | key) = softmax(W_out LN(h_L))                       (W_out: the LM's head, or its own)

    loss = alpha * mean_{i in S} KL(p_kNN,i || p_MLP(.|key_i)) + (1 - alpha) * mean_i CE(v_i)

with p_kNN,i entry i's own kNN distribution over the other entries (knnlm.leave_one_out)
on a seeded sample S of entries, and CE over every entry of the batch. It is interpolated
as the kNN-LM is: p = lambda p_MLP + (1 - lambda) p_LM. Torch-free arithmetic (sizes,
bytes, budgets) and the stage's tables are in memory.py.

A memory is a PreTrainedModel (save_pretrained / from_pretrained, safetensors) trained by
train.run, so it resumes after a kill as an LM does; its batches read the datastore's key
file a few rows at a time (memory follows the batch, not the datastore).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .index import as_rows
from .train import TrainSettings

# Logits per chunk of the fused loss (as train.HeadCrossEntropy): at a 16k vocabulary a whole
# 1,024-key batch in one chunk ran 1.05x faster than 128-row chunks on a 2-core CPU.
LOSS_CHUNK_CPU = 2**24
LOSS_CHUNK_CUDA = 2**26
READ_BLOCK = 4096  # consecutive datastore entries read together
SHUFFLE_BLOCKS = 64  # blocks whose entries are shuffled together (an epoch visits every entry once)


class MemoryConfig(PretrainedConfig):
    model_type = "knnlm_memory"

    def __init__(self, key_width: int = 128, vocab_size: int = 16384, layers: int = 2, expansion: int = 4, **kwargs):
        self.key_width, self.vocab_size, self.layers, self.expansion = key_width, vocab_size, layers, expansion
        super().__init__(**kwargs)


class MemoryBlock(nn.Module):
    """x + W2 gelu(W1 LN(x)): a residual pre-norm MLP block."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class MemoryMLP(PreTrainedModel):
    """Keys (N, key_width) -> next-token logits (N, vocab_size)."""

    config_class = MemoryConfig
    base_model_prefix = "memory"

    def __init__(self, config: MemoryConfig):
        super().__init__(config)
        d = config.key_width
        self.blocks = nn.ModuleList(MemoryBlock(d, config.expansion * d) for _ in range(config.layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def hidden(self, keys: torch.Tensor) -> torch.Tensor:
        """LN(h_L): what the head reads."""
        x = keys
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, keys: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(keys))


def build(key_width: int, vocab_size: int, layers: int, expansion: int, head: str = "lm", lm=None,
          seed: int = 0) -> MemoryMLP:
    """A memory, seeded; head 'lm' starts from the LM's output matrix and trains it,
    'lm_frozen' is the LM's own (not trained), 'random' its own from random weights."""
    torch.manual_seed(seed)
    memory = MemoryMLP(MemoryConfig(key_width=key_width, vocab_size=vocab_size, layers=layers, expansion=expansion))
    if head in ("lm", "lm_frozen"):
        weight = lm.get_output_embeddings().weight
        if tuple(weight.shape) != (vocab_size, key_width):
            raise ValueError(f"memory.head {head!r}: the LM's head is {tuple(weight.shape)}, the memory's "
                             f"({vocab_size}, {key_width})")
        with torch.no_grad():
            memory.head.weight.copy_(weight.detach().float().cpu())
    memory.head.weight.requires_grad_(head != "lm_frozen")
    return memory


# ---------------------------------------------------------------- the loss


class SparseTargetCrossEntropy(torch.autograd.Function):
    """sum_i sum_j w_ij (logsumexp_i - logit_i[t_ij]) of the logits z W^T, chunk by chunk of rows.

    train.HeadCrossEntropy with each row's target a sparse distribution: tokens t_ij (-1:
    none) with weights w_ij that already hold each row's share of the batch's loss. The
    (N, V) logits never exist in full; each chunk's softmax p gives the gradient
    dL/dlogit_i = (sum_j w_ij) p_i - sum_j w_ij onehot(t_ij) in the same pass, and W's
    gradient only where W trains.
    """

    @staticmethod
    def forward(ctx, z, weight, targets, target_weights, chunk):
        grad_z = torch.empty_like(z)
        trains = weight.requires_grad
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if trains else None
        total = torch.zeros((), dtype=torch.float32, device=z.device)
        for lo in range(0, z.size(0), chunk):
            z_chunk = z[lo : lo + chunk]
            t = targets[lo : lo + chunk]
            w = torch.where(t >= 0, target_weights[lo : lo + chunk], 0.0).float()
            t = t.clamp(min=0)
            p = torch.matmul(z_chunk, weight.t()).float()  # logits, then probabilities in place
            picked = p.gather(1, t)
            top = p.amax(1, keepdim=True)
            p.sub_(top).exp_()
            norm = p.sum(1, keepdim=True)
            mass = w.sum(1, keepdim=True)
            total += (mass * (norm.log() + top)).sum() - (w * picked).sum()
            p.mul_(mass / norm)
            p.scatter_add_(1, t, -w)
            grad_z[lo : lo + chunk] = torch.matmul(p, weight.float()).to(z.dtype)
            if trains:
                grad_w += torch.matmul(p.t(), z_chunk.float())
        ctx.save_for_backward(grad_z)
        ctx.grad_w, ctx.weight_dtype = grad_w, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_z,) = ctx.saved_tensors
        grad_w = None if ctx.grad_w is None else (ctx.grad_w * grad_loss).to(ctx.weight_dtype)
        return grad_z * grad_loss, grad_w, None, None, None


def neg_entropy(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_y q(y) log q(y) of each row's distribution q: weights summed by value (-1: none)."""
    rows = np.broadcast_to(np.arange(len(values))[:, None], values.shape)
    keep = (values >= 0) & (weights > 0)
    width = int(values.max(initial=0)) + 1  # (row, value) -> one cell id
    cell, inverse = np.unique(rows[keep].astype(np.int64) * width + values[keep], return_inverse=True)
    q = np.bincount(inverse, weights=weights[keep])
    return np.bincount(cell // width, weights=q * np.log(q), minlength=len(values))


@dataclass
class Batch:
    keys: torch.Tensor  # (B, d) float32
    values: torch.Tensor  # (B,) int64: each entry's next token
    kl: torch.Tensor  # (b,) int64: the batch rows with a kNN target
    kl_values: torch.Tensor  # (b, k) int64, -1 where none
    kl_weights: torch.Tensor  # (b, k) float32, each row summing to 1
    kl_neg_entropy: torch.Tensor  # (b,) float64: sum q log q of each kNN target


def memory_loss(model: MemoryMLP, batch: Batch, alpha: float) -> torch.Tensor:
    """alpha * mean KL(p_kNN || p_MLP) over the batch's rows with a kNN target
    + (1 - alpha) * mean CE(value) over all its rows."""
    z = model.hidden(batch.keys)
    n, n_kl = len(batch.values), len(batch.kl)
    ce, kl = (1.0 - alpha) / n, (alpha / n_kl if n_kl else 0.0)
    width = 1 + batch.kl_values.shape[1]
    targets = torch.full((n, width), -1, dtype=torch.int64, device=z.device)
    weights = torch.zeros((n, width), dtype=torch.float32, device=z.device)
    targets[:, 0], weights[:, 0] = batch.values, ce
    targets[batch.kl, 1:], weights[batch.kl, 1:] = batch.kl_values, kl * batch.kl_weights
    chunk = max(1, (LOSS_CHUNK_CUDA if z.is_cuda else LOSS_CHUNK_CPU) // model.config.vocab_size)
    cross = SparseTargetCrossEntropy.apply(z, model.head.weight, targets, weights, chunk)
    return cross + kl * batch.kl_neg_entropy.sum().to(cross.dtype)


# ---------------------------------------------------------------- the data


class MemoryData:
    """A datastore's entries and kNN targets, read a batch at a time.

    keys: the (N, d) float16 key file (or an array); values: (N,) next tokens; kl_rows:
    sorted entry ids with a kNN target, kl_values / kl_weights their (S, k) neighbour values
    and float16 weights (files or arrays), or None for no kNN target at all.
    """

    def __init__(self, keys, values, kl_rows=None, kl_values=None, kl_weights=None):
        self.keys, self.values = as_rows(keys), values
        self.kl_rows = np.zeros(0, np.int64) if kl_rows is None else np.asarray(kl_rows, dtype=np.int64)
        self.kl_values, self.kl_weights = as_rows(kl_values), as_rows(kl_weights)

    def __len__(self) -> int:
        return len(self.values)

    def fingerprint_arrays(self) -> list[np.ndarray]:
        """What a resumable memory run must have been trained on: the values, the kNN sample,
        the key file's shape and a seeded sample of its rows (the file can be 100s of GB)."""
        probe = np.sort(np.random.default_rng(0).choice(len(self), size=min(4096, len(self)), replace=False))
        return [np.asarray(self.values), self.kl_rows, np.asarray(self.keys.shape, dtype=np.int64),
                np.asarray(self.keys[probe])]

    def batch(self, rows: np.ndarray, device) -> Batch:
        """The entries `rows` (sorted ids): their keys, values and kNN targets."""
        keys = torch.from_numpy(np.asarray(self.keys[rows], dtype=np.float32))
        values = torch.from_numpy(np.asarray(self.values[rows], dtype=np.int64))
        where = np.searchsorted(self.kl_rows, rows)
        has = (where < len(self.kl_rows)) & (self.kl_rows[np.minimum(where, len(self.kl_rows) - 1)] == rows) \
            if len(self.kl_rows) else np.zeros(len(rows), bool)
        k = 0 if self.kl_values is None else self.kl_values.shape[1]
        nbr = np.asarray(self.kl_values[where[has]], dtype=np.int64).reshape(-1, k) if has.any() \
            else np.zeros((0, k), np.int64)
        w = np.asarray(self.kl_weights[where[has]], dtype=np.float64).reshape(-1, k) if has.any() \
            else np.zeros((0, k))
        w = np.where(nbr >= 0, w, 0.0)
        total = w.sum(1)
        ok = total > 0  # an entry with no neighbour at all has no kNN target
        nbr, w = nbr[ok], w[ok] / total[ok, None]
        kl = torch.from_numpy(np.flatnonzero(has)[ok])
        return Batch(keys.to(device), values.to(device), kl.to(device), torch.from_numpy(nbr).to(device),
                     torch.from_numpy(w.astype(np.float32)).to(device), torch.from_numpy(neg_entropy(nbr, w)).to(device))


@lru_cache(maxsize=4)
def _group_order(seed: int, epoch: int, group: int, n: int, block: int, blocks: int) -> np.ndarray:
    """The entry ids of one group of an epoch, in their shuffled order."""
    order = np.random.default_rng([seed, epoch]).permutation(-(-n // block))
    rows = np.concatenate([np.arange(b * block, min((b + 1) * block, n)) for b in order[group * blocks:(group + 1) * blocks]])
    return rows[np.random.default_rng([seed, epoch, group]).permutation(len(rows))]


def batch_rows(step: int, n: int, s: TrainSettings, block: int = READ_BLOCK, blocks: int = SHUFFLE_BLOCKS) -> np.ndarray:
    """The entry ids of step `step`, sorted (read in file order), a function of (seed, step).

    Each epoch visits every entry once: its blocks of `block` consecutive entries in a seeded
    order, `blocks` blocks at a time shuffled together, so a step reads a few MB of the key
    file (not all of it) and consecutive steps the same few.
    """
    flat = step * s.batch_size + np.arange(s.batch_size)
    epochs, offsets = np.divmod(flat, n)
    out = np.empty(len(flat), dtype=np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        order = np.random.default_rng([s.seed, int(epoch)]).permutation(-(-n // block))
        sizes = np.minimum(block, n - order * block)  # the last block may be short
        ends = np.cumsum(np.add.reduceat(sizes, np.arange(0, len(sizes), blocks)))
        group = np.searchsorted(ends, offsets[sel], side="right")
        within = offsets[sel] - np.concatenate([[0], ends])[group]
        for g in np.unique(group):
            out[np.flatnonzero(sel)[group == g]] = _group_order(s.seed, int(epoch), int(g), n, block, blocks)[within[group == g]]
    return np.sort(out)


def settings(n_entries: int, epochs: float, batch_size: int, warmup_steps: int = 0, **train) -> TrainSettings:
    """TrainSettings of a memory trained `epochs` passes over n_entries entries; its warm-up
    is at most a tenth of its steps (a small datastore's memory would never leave it)."""
    steps = max(1, math.ceil(epochs * n_entries / batch_size))
    return TrainSettings(checkpoints=[steps], batch_size=batch_size, warmup_steps=min(warmup_steps, steps // 10),
                         **train)


def loss_at(model: MemoryMLP, data: MemoryData, s: TrainSettings, alpha: float):
    """step -> the loss of that step's batch (for train.run)."""
    device = next(model.parameters()).device

    def at(step: int) -> torch.Tensor:
        return memory_loss(model, data.batch(batch_rows(step, len(data), s), device), alpha)
    return at


def fit(model: MemoryMLP, data: MemoryData, s: TrainSettings, alpha: float) -> MemoryMLP:
    """Train in memory, no resumable state (a small datastore inside one job: Macondo's):
    train.run's steps, without its checkpoints."""
    from .train import _optimizer, autocast_for, take_step

    model.float().train()
    optimizer = _optimizer(model, s)
    step_loss, autocast = loss_at(model, data, s, alpha), autocast_for(next(model.parameters()).device)
    for step in range(s.total_steps):
        take_step(model, optimizer, s, step, step_loss, autocast)
    return model.eval()


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def target_logprob(model: MemoryMLP, queries: np.ndarray, targets: np.ndarray, batch: int = 4096) -> np.ndarray:
    """log p_MLP(target | query) of each row, float64."""
    model.eval()
    device = next(model.parameters()).device
    out = np.empty(len(targets), dtype=np.float64)
    for lo in range(0, len(targets), batch):
        q = torch.from_numpy(np.asarray(queries[lo : lo + batch], dtype=np.float32)).to(device)
        t = torch.from_numpy(np.asarray(targets[lo : lo + batch], dtype=np.int64)).to(device)
        logits = model(q).float()
        out[lo : lo + batch] = (logits.gather(1, t[:, None])[:, 0] - torch.logsumexp(logits, 1)).double().cpu().numpy()
    return out


def _best_seconds(call, drain, repeat: int) -> float:
    """One untimed call (a warm-up), then the best of `repeat` timed ones, each timing ended by
    drain() (a GPU's queue)."""
    call()
    drain()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        drain()
        best = min(best, time.perf_counter() - start)
    return best


def time_queries(search, model: MemoryMLP, queries: np.ndarray, device: str, threads: int, repeat: int = 2) -> dict:
    """Seconds per 1,000 queries of search(queries) and of the memory's forward (log-probabilities
    over the vocabulary), timed alike: on `device`, with `threads` CPU threads (torch's and
    FAISS's, set for the timing and restored after); the queries placed there before either
    timer starts, the same for both (on a CPU one float32 array, which the memory reads as a
    tensor without a copy; on a GPU one tensor there); one untimed call of each first; the best
    of `repeat` timed calls of each, the device's queue drained inside the timer.

    search: the search being timed, any callable of the placed queries (index.Searcher's on a
    CPU, index.gpu_search's on a GPU, or another). The model is moved to `device`.
    """
    import faiss

    placed = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    searched = placed.numpy() if placed.device.type == "cpu" else placed  # the same memory
    model = model.to(device).eval()

    def drain():
        if placed.device.type == "cuda":
            torch.cuda.synchronize(placed.device)

    @torch.no_grad()
    def forward():
        torch.log_softmax(model(placed).float(), -1)

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        search_seconds = _best_seconds(lambda: search(searched), drain, repeat)
        memory_seconds = _best_seconds(forward, drain, repeat)
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
    per_1000 = 1000 / max(1, len(queries))
    return {"search_device": device, "search_threads": threads, "search_seconds_per_1000": search_seconds * per_1000,
            "memory_device": device, "memory_threads": threads, "memory_seconds_per_1000": memory_seconds * per_1000}


def query_costs(searches: dict, model: MemoryMLP, queries: np.ndarray, threads: int) -> list[dict]:
    """One row per device of `searches` ({device: the search there, a callable of the placed
    queries; or why that device's pair is skipped}): time_queries' timings of the search and
    the memory side by side there, or the reason in `note`."""
    rows = []
    for device, search in searches.items():
        if isinstance(search, str):
            rows.append({"search_device": device, "search_threads": threads, "search_seconds_per_1000": math.nan,
                         "memory_device": device, "memory_threads": threads, "memory_seconds_per_1000": math.nan,
                         "note": f"{device} pair skipped: {search}"})
        else:
            rows.append({**time_queries(search, model, queries, device, threads), "note": ""})
    return [{"queries": len(queries), **row} for row in rows]


# ---------------------------------------------------------------- the stage's jobs


def train_and_evaluate(key_files, value_files, manifests, kl_folder, lm_dir, queries: dict, found: dict, index_dirs,
                       out_model, out_logprobs, out_footprint, out_costs, work_dir, shape: dict, alpha: float,
                       train: dict, search: dict, timing_queries: int, threads: int, log=None) -> None:
    """The train_memory job: train a memory on the datastore's shards (resumable), then its
    log-prob of every evaluated target from the search's own query keys; its footprint
    (parameters, bytes, training steps, and the compute of its training and of its kNN targets'
    search); and what it and the search over every shard cost at query time, timed here side by
    side (query_costs: on the CPU with the job's threads, and on a GPU machine on the GPU too,
    or why not)."""
    import pandas as pd

    from . import io, memory, train as training
    from .knnlm import SearchResults
    from .model import best_device, load_lm
    from .shards import ShardedRows, ShardedSearch, gpu_search as sharded_gpu_search

    keys, values = ShardedRows(key_files), ShardedRows(value_files)
    data = MemoryData(keys, values, *(memory.kl_targets(kl_folder) if kl_folder else (None, None, None)))
    lm = load_lm(str(lm_dir))
    key_width, vocab = keys.shape[1], lm.config.vocab_size
    model = build(key_width, vocab, shape["layers"], shape["expansion"], shape["head"], lm, train["seed"])
    del lm
    model = model.to(best_device())
    s = settings(len(data), **train)
    print(f"{len(data)} entries, {len(data.kl_rows)} with a kNN target; alpha {alpha}; {s.total_steps} steps of "
          f"{s.batch_size}, warm-up {s.warmup_steps}", file=log, flush=True)
    training.run(model, s, {s.total_steps: out_model}, work_dir, loss_at(model, data, s, alpha),
                 data.fingerprint_arrays(), log, desc="memory")
    logprobs = {split: target_logprob(model, np.load(queries[split], mmap_mode="r"),
                                      SearchResults.load(found[split], neighbours=False).targets)
                for split in ("valid", "test")}
    io.save_npz(out_logprobs, **logprobs)
    searcher = ShardedSearch.open(key_files, value_files, manifests, index_dirs, {**search, "threads": threads})
    counts = memory.parameters(key_width, vocab, shape["layers"], shape["expansion"])
    # the kNN targets it was trained on were searched through this index (memory_targets)
    searched = memory.target_search_flops(len(data.kl_rows), len(data), key_width, searcher.kind, search["k"],
                                          search["nprobe"], search["rerank"], len(key_files)) if kl_folder else 0.0
    footprint = {"params_body": counts["body"], "params_head": counts["head"],
                 **memory.memory_bytes(counts, shape["head"]), "train_steps": s.total_steps,
                 "train_flops": memory.training_flops(counts, shape["head"], len(data), train["epochs"]),
                 "target_search_flops": searched}
    io.write_csv(out_footprint, pd.DataFrame([footprint]))
    q = np.asarray(np.load(queries["test"], mmap_mode="r")[:timing_queries], dtype=np.float32)
    # both on the CPU with the job's threads; on a GPU machine both on the GPU too, where FAISS can
    searches = {"cpu": lambda placed: searcher.search(placed, search["k"])}
    if torch.cuda.is_available():
        on_gpu, why = sharded_gpu_search(searcher, search["k"])
        searches["cuda"] = on_gpu or why
    costs = pd.DataFrame(query_costs(searches, model, q, threads))
    costs.insert(1, "search", searcher.kind)
    io.write_csv(out_costs, costs)
    print(footprint, costs.to_string(index=False), sep="\n", file=log)


def more_training(model_dir, examples_file, manifests, splits: dict, out_model, out_logprobs, work_dir, step: int,
                  train: dict, seed: int, windowing: dict, memory_shape: dict, budget: dict, batch_tokens: int,
                  log=None) -> None:
    """The more_training job: the scale point's LM trained further from its own weights and
    optimizer state, on the same training blocks in the same order, for the memory's compute
    (budget: control_budget 'compute', its training and its kNN targets' search as
    budget['target_search'] plans it, memory.imitation_flops; or 'epochs', its epochs); then
    its log-prob of every evaluated target (an LM-only pass)."""
    from pathlib import Path

    from . import io, memory, train as training
    from .knnlm import lm_and_queries
    from .model import load_lm
    from .tokens import blocks, load_stream, windows

    state = Path(model_dir) / "optimizer.pt"
    if not state.is_file():
        raise FileNotFoundError(f"{state}: the checkpoint keeps no optimizer state to continue from; its training "
                                "predates train.keep_optimizer: rerun it (snakemake -R train_corpus_lm)")
    lm = load_lm(str(model_dir))
    stream = load_stream(examples_file)
    from .shards import offsets

    n_entries, d = int(offsets(manifests)[-1]), lm.config.hidden_size
    counts = memory.parameters(d, lm.config.vocab_size, memory_shape["layers"], memory_shape["expansion"])
    flops = memory.imitation_flops(counts, memory_shape["head"], n_entries, budget["epochs"], d,
                                   budget["target_search"])
    tokens_per_step = train["batch_size"] * windowing["block_size"]
    params = sum(p.numel() for p in lm.parameters())
    extra = memory.more_training_steps(budget["control_budget"], flops, params, tokens_per_step, budget["epochs"],
                                       len(stream))
    s = training.TrainSettings(**{**train, "checkpoints": [step + extra]}, seed=seed)
    print(f"continuing from step {step} for {extra} steps ({budget['control_budget']}: the memory's "
          f"{flops:.3g} FLOPs of training and kNN-target search)", file=log, flush=True)
    optim = torch.load(state, weights_only=True, map_location=next(lm.parameters()).device)
    training.train(lm, blocks(stream, windowing["block_size"]), s, {step + extra: out_model}, work_dir, log,
                   start=training.Start(step, optim))
    logprobs = {}
    for split, path in splits.items():
        examples = windows(load_stream(path), windowing["block_size"], windowing["stride"])
        logprobs[split] = lm_and_queries(lm, examples, None, batch_tokens, log)[0].lm_logprob.astype(np.float64)
    # its own compute, 6 FLOPs a parameter a token: at least the budget, by less than a step
    io.save_npz(out_logprobs, **logprobs, extra_steps=np.asarray(extra),
                train_flops=np.asarray(6.0 * params * tokens_per_step * extra))
