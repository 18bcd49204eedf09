"""Batched projection vs a per-token loop, and index-building peak memory, in one run.

speed-up = time(per-token loop over N tokens) / time(one batched solve of N tokens)   goal >= 20
memory   = peak RSS growth while building a FAISS index / keys file size            goal <= 1.5
(measured in a fresh subprocess per factory, so earlier allocations do not count)
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from knnlm_limits import projection

MEMORY_PROBE = r"""
import json, sys
from knnlm_limits import index
def status_mb(field):  # VmRSS (now) or VmHWM (peak) of this address space; ru_maxrss would
    for line in open("/proc/self/status"):  # carry the parent's peak across fork+exec
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
base = status_mb("VmRSS")
built = index.build(sys.argv[1], sys.argv[2], train_sample=50_000)
print(json.dumps({"base_mb": base, "peak_mb": status_mb("VmHWM"), "ntotal": built.ntotal}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--keys", type=int, default=400_000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-index", action="store_true", help="only the projection part (no FAISS needed)")
    args = ap.parse_args()

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    W = (torch.randn(args.vocab, args.width) * 0.02).to(dev)
    head = lambda z: z @ W.T  # noqa: E731
    target = torch.log_softmax(torch.randn(args.tokens, args.vocab) * 2, -1).to(dev)
    z0 = torch.randn(args.tokens, args.width).to(dev)

    def timed(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    timed(lambda: projection.project(head, z0[:2], target[:2], steps=5, lr=0.1))  # warm-up
    (batched, _), t_batched = timed(lambda: projection.project(head, z0, target, steps=args.steps, lr=0.1))
    alone, t_loop = timed(lambda: [
        projection.project(head, z0[i : i + 1], target[i : i + 1], steps=args.steps, lr=0.1)[0]
        for i in range(args.tokens)
    ])
    diff = (batched - torch.cat(alone)).abs().max().item()
    print(f"projection on {dev} of {args.tokens} tokens, {args.steps} Adam steps, vocab {args.vocab}, d {args.width}:")
    print(f"  per-token loop {t_loop:.2f}s, batched {t_batched:.2f}s, speed-up {t_loop / t_batched:.1f}x "
          f"(goal >= 20x); max |z*_batched - z*_alone| = {diff:.1e}")

    if args.skip_index:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keys.npy"
        keys = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(args.keys, args.width))
        rng = np.random.default_rng(0)
        for start in range(0, args.keys, 100_000):
            stop = min(start + 100_000, args.keys)
            keys[start:stop] = rng.normal(size=(stop - start, args.width)).astype(np.float16)
        keys.flush()
        del keys
        size_mb = path.stat().st_size / 2**20
        print(f"index building, keys file {size_mb:.0f} MB ({args.keys} x {args.width} float16):")
        for factory in ("Flat", "SQfp16", "IVF1024,PQ32"):
            out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), factory],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            growth = r["peak_mb"] - r["base_mb"]
            print(f"  {factory:>13}: peak RSS growth {growth:.0f} MB = {growth / size_mb:.2f} x keys file (goal <= 1.5)")


if __name__ == "__main__":
    main()
