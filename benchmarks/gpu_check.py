"""One command that checks a GPU against the cost model's GPU terms (`make gpu-check`).

On a machine with a CUDA GPU, in a few minutes:

- training tokens/s of the paper's corpus-LM shape (GPT-2 small, 12 x 768, GPT-2's
  vocabulary, 1,024-token blocks, batch 16) under bf16 autocast, with the workflow's own
  loss and optimizer, and its peak GPU memory;
- the same step at batch 1 x 64 tokens: what a step costs when the GPU is not filled
  (the kernel launches that `gpu_seconds_per_step_layer` stands for);
- datastore embedding tokens/s (the datastore stage's forward, keys only, float32) and its
  peak GPU memory;
- FAISS search queries/s, exact and IVF-PQ, on the CPU and, where FAISS has GPU support
  (the optional extra `gpu`: faiss-gpu-cu12 in place of faiss-cpu), on the GPU.

It prints each measurement beside the term of src/knnlm_limits/costs/costs.yaml it checks
(`measured_gpu`: `gpu_flops`, `gpu_fp32_forward_flops`, `activation_bytes_per_token_layer_dim`,
`gpu_seconds_per_step_layer`, and FAISS's `*_search_thread_efficiency` on the CPU threads beside
the GPU), with measured / what costs.yaml predicts, and writes them as CSV
(benchmarks/out/gpu_check.csv). Without a GPU it runs the same code at toy size on the CPU
and says what it skipped, so that the check keeps working where no GPU is lent.

    .venv/bin/python benchmarks/gpu_check.py [--out benchmarks/out/gpu_check.csv] [--toy]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import faiss  # noqa: E402
import torch  # noqa: E402

from knnlm_limits import costs, model, train  # noqa: E402
from knnlm_limits.costs.base import search_threads  # noqa: E402
from knnlm_limits.index import exact_search  # noqa: E402


@dataclass
class Size:
    """What is measured: the corpus LM's shape, its batches and the FAISS datastore."""

    n_layer: int
    n_embd: int
    n_head: int
    vocab: int
    block: int
    batch: int
    steps: int
    keys: int
    queries: int
    k: int
    ivf: str
    nprobe: int


PAPER = Size(n_layer=12, n_embd=768, n_head=12, vocab=50257, block=1024, batch=16, steps=20,
             keys=262_144, queries=4096, k=1024, ivf="IVF1024,PQ64", nprobe=32)
TOY = Size(n_layer=2, n_embd=64, n_head=2, vocab=512, block=64, batch=4, steps=3,
           keys=16_384, queries=256, k=64, ivf="IVF32,PQ8", nprobe=4)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mb(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e6 if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build_lm(size: Size, device):
    lm = model.build_model(vocab_size=size.vocab, n_layer=size.n_layer, n_embd=size.n_embd, n_head=size.n_head,
                           n_positions=size.block, seed=0)
    return lm.to(device)


def train_steps(lm, size: Size, batch: int, block: int, steps: int, device) -> float:
    """Seconds per training step of `batch` x `block` tokens: the training stage's own step
    (train.take_step: its loss, clipping and optimizer, bf16 autocast on a GPU)."""
    settings = train.TrainSettings(checkpoints=[steps + 1], batch_size=batch, lr=1e-4)
    optimizer = train._optimizer(lm, settings)
    autocast = train.autocast_for(device)
    ids = torch.randint(0, size.vocab, (batch, block), device=device)
    scored = torch.ones(batch, block - 1, dtype=torch.bool, device=device)
    lm.train()

    def step(i: int):
        train.take_step(lm, optimizer, settings, i, lambda _: train.lm_loss(lm, ids, scored), autocast)

    step(0)  # warm-up: kernels chosen, memory allocated
    sync(device)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    sync(device)
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def embed_seconds(lm, size: Size, steps: int, device) -> float:
    """Seconds per batch of the datastore stage's forward (keys only, float32)."""
    lm.eval()
    ids = torch.randint(0, size.vocab, (size.batch, size.block), device=device)
    model.keys_only(lm, ids)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        model.keys_only(lm, ids).float().cpu()
    sync(device)
    return (time.perf_counter() - start) / steps


def faiss_rates(size: Size, on_gpu: bool) -> dict:
    """Queries/s of exact and IVF-PQ search over size.keys random keys, k neighbours."""
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((size.keys, size.n_embd), dtype=np.float32)
    queries = rng.standard_normal((size.queries, size.n_embd), dtype=np.float32)
    out = {}
    if on_gpu:
        res = faiss.StandardGpuResources()
        flat = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatL2(size.n_embd))
        flat.add(keys)
        exact = lambda: flat.search(queries, min(size.k, 2048))  # noqa: E731  (GPU k is capped at 2048)
    else:
        exact = lambda: exact_search(keys, queries, size.k)  # noqa: E731  (the exact stage's own search)
    out["exact"] = size.queries / _timed(exact)
    ivf = faiss.index_factory(size.n_embd, size.ivf)
    # enough keys for the coarse lists and for 256 codewords a sub-quantizer (FAISS asks 39 a centroid)
    ivf.train(keys[: min(size.keys, max(64 * faiss.extract_index_ivf(ivf).nlist, 39 * 256))])
    ivf.add(keys)
    faiss.extract_index_ivf(ivf).nprobe = size.nprobe
    if on_gpu:
        ivf = faiss.index_cpu_to_gpu(res, 0, ivf)
    out["ivf"] = size.queries / _timed(lambda: ivf.search(queries, size.k))
    return out


def _timed(fn) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(size: Size, device, faiss_gpu: bool) -> tuple[list[dict], list[str]]:
    """The measurements as rows (measured beside the cost model's term) and what was skipped."""
    gpu_terms, measured = costs.table()["measured_gpu"], costs.table()["measured"]
    rows, skipped = [], []
    gpu = device.type == "cuda"

    def row(what, value, unit, term=None, model_value=None, peak=None):
        ratio = value / model_value if model_value else None
        rows.append({"what": what, "measured": value, "unit": unit, "cost_term": term or "",
                     "cost_model": model_value, "measured_over_model": ratio, "peak_gpu_mb": peak})

    lm = build_lm(size, device)
    params = sum(p.numel() for p in lm.parameters())
    reset_peak(device)
    secs = train_steps(lm, size, size.batch, size.block, size.steps, device)
    tokens = size.batch * size.block
    train_peak = peak_mb(device)
    row(f"training, {size.n_layer}x{size.n_embd}, batch {size.batch}x{size.block}"
        + (", bf16 autocast" if gpu else ", float32 (CPU)"), tokens / secs, "tokens/s")
    flops = 6 * params * tokens / secs
    row("training: effective FLOP/s (6 x params x tokens/s)", flops, "FLOP/s",
        "gpu_flops" if gpu else "cpu_flops_per_thread",
        gpu_terms["gpu_flops"] if gpu else measured["cpu_flops_per_thread"] * torch.get_num_threads(), train_peak)
    if gpu:
        activation = (train_peak * 1e6 - 16 * params) / (tokens * size.n_layer * size.n_embd)
        row("training: activation bytes per token, layer and width", activation, "bytes",
            "activation_bytes_per_token_layer_dim", gpu_terms["activation_bytes_per_token_layer_dim"], train_peak)
        small = train_steps(lm, size, 1, 64, size.steps, device)
        row("training step at batch 1 x 64: seconds per layer", small / size.n_layer, "s",
            "gpu_seconds_per_step_layer", gpu_terms["gpu_seconds_per_step_layer"])
    else:
        skipped += ["bf16 autocast (CUDA only)", "activation memory (no GPU memory to read)",
                    "launch-bound small steps (gpu_seconds_per_step_layer)"]
    reset_peak(device)
    secs = embed_seconds(lm, size, size.steps, device)
    row("datastore embedding (keys only, float32)", tokens / secs, "tokens/s",
        "gpu_fp32_forward_flops" if gpu else "cpu_flops_per_thread",
        (gpu_terms["gpu_fp32_forward_flops"] if gpu else measured["cpu_flops_per_thread"] * torch.get_num_threads())
        / (2 * params), peak_mb(device))
    del lm
    cpu = faiss_rates(size, on_gpu=False)
    code = int(size.ivf.split("PQ")[1])
    scanned = size.keys * min(1.0, size.nprobe / faiss.extract_index_ivf(faiss.index_factory(size.n_embd, size.ivf)).nlist)
    threads = faiss.omp_get_max_threads()
    row(f"FAISS exact search on the CPU, {size.keys} keys, k {size.k}, {threads} threads", cpu["exact"], "queries/s",
        "exact_search_thread_efficiency", measured["cpu_flops_per_thread"] * search_threads(threads, "exact")
        / (2 * size.keys * size.n_embd))
    row(f"FAISS {size.ivf} search on the CPU, nprobe {size.nprobe}, {threads} threads", cpu["ivf"], "queries/s",
        "pq_search_thread_efficiency",
        search_threads(threads, "pq") / (measured["pq_seconds_per_code_byte"] * scanned * code))
    if faiss_gpu:
        on_gpu = faiss_rates(size, on_gpu=True)
        row(f"FAISS exact search on the GPU, {size.keys} keys", on_gpu["exact"], "queries/s")
        row(f"FAISS {size.ivf} search on the GPU, nprobe {size.nprobe}", on_gpu["ivf"], "queries/s")
    else:
        skipped.append("FAISS on the GPU (" + ("no GPU" if not gpu else
                       "this FAISS has no GPU support: pip uninstall faiss-cpu, then install the extra: "
                       "pip install -e '.[gpu]'") + ")")
    return rows, skipped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/gpu_check.csv"))
    ap.add_argument("--toy", action="store_true", help="toy sizes even on a GPU (what the test runs)")
    args = ap.parse_args(argv)
    device = model.best_device()
    size = TOY if args.toy or device.type != "cuda" else PAPER
    faiss_gpu = device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}; sizes: {'paper' if size is PAPER else 'toy'}", flush=True)
    start = time.perf_counter()
    rows, skipped = run(size, device, faiss_gpu)
    print(f"\n{'measurement':<62} {'measured':>12} {'unit':<10} {'costs.yaml term':<38} {'costs.yaml':>10} {'ratio':>7} {'peak GPU MB':>12}")
    for r in rows:
        predicted = f"{r['cost_model']:.3g}" if r["cost_model"] else "-"
        ratio = f"{r['measured_over_model']:.2f}" if r["measured_over_model"] else "-"
        peak = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] else "-"
        print(f"{r['what']:<62} {r['measured']:>12.4g} {r['unit']:<10} {r['cost_term']:<38} {predicted:>10} {ratio:>7} {peak:>12}")
    for what in skipped:
        print(f"skipped: {what}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{len(rows)} measurements in {time.perf_counter() - start:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
