"""Exact kNN search from the float16 key file by blocks vs FAISS Flat, in one run.

Prints the throughput ratio (blocks, reading the file, / Flat, searching its
in-memory index; goal >= 0.8; the median of alternating repeats, as this
machine is noisy) and each one's peak RSS over the key file's size (goal <= 1.5
for the blocks), each search run in a fresh process so that its peak (VmHWM) is
its own. Neighbours are checked equal.

    .venv/bin/python benchmarks/exact_search.py [--keys 1000000 --dim 128 --queries 2048 --k 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np, faiss
sys.path.insert(0, sys.argv[5])
from knnlm_limits.index import exact_search, NpyRows
faiss.omp_set_num_threads(int(sys.argv[6]))
kind, keys_path, queries_path, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
queries = np.load(queries_path)
t0 = time.perf_counter()
if kind == "blocks":
    dists, ids = exact_search(keys_path, queries, k)
else:  # Flat: the whole key matrix as float32 in an index
    rows = NpyRows(keys_path)
    index = faiss.IndexFlatL2(rows.shape[1])
    for start in range(0, rows.shape[0], 65536):
        index.add(np.asarray(rows[start:start + 65536], dtype=np.float32))
    t0 = time.perf_counter()  # search time only
    dists, ids = index.search(queries, k)
seconds = time.perf_counter() - t0
np.save(sys.argv[2] + f".{kind}.ids.npy", ids)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_kb": hwm}))
"""


def run(kind, keys, queries, k, threads):
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(keys), str(queries), str(k), src, str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        keys_path, queries_path = Path(tmp) / "keys.npy", Path(tmp) / "queries.npy"
        keys = np.lib.format.open_memmap(keys_path, mode="w+", dtype=np.float16, shape=(args.keys, args.dim))
        for start in range(0, args.keys, 100_000):
            keys[start:start + 100_000] = rng.normal(size=(min(100_000, args.keys - start), args.dim))
        keys.flush()
        del keys
        np.save(queries_path, rng.normal(size=(args.queries, args.dim)).astype(np.float32))
        file_kb = keys_path.stat().st_size / 1024

        runs = [(run("blocks", keys_path, queries_path, args.k, args.threads),
                 run("flat", keys_path, queries_path, args.k, args.threads)) for _ in range(args.repeats)]
        same = np.array_equal(np.load(f"{keys_path}.blocks.ids.npy"), np.load(f"{keys_path}.flat.ids.npy"))
    ratios = sorted(f["seconds"] / b["seconds"] for b, f in runs)
    blocks, flat = runs[len(runs) // 2]

    print(f"{args.keys} x {args.dim} float16 keys ({file_kb / 1024:.0f} MB), {args.queries} queries, k = {args.k}, "
          f"{args.threads} threads")
    for b, f in runs:
        print(f"  blocks {b['seconds']:.2f} s, Flat {f['seconds']:.2f} s (search only): ratio {f['seconds'] / b['seconds']:.2f}")
    print(f"throughput blocks / Flat: median {ratios[len(ratios) // 2]:.2f} of {args.repeats} (goal >= 0.8)")
    print(f"peak RSS: blocks {blocks['peak_kb'] / 1024:.0f} MB, Flat {flat['peak_kb'] / 1024:.0f} MB")
    print(f"peak RSS / keys file: blocks {blocks['peak_kb'] / file_kb:.2f} (goal <= 1.5), Flat {flat['peak_kb'] / file_kb:.2f}")
    print(f"same neighbours: {same}")


if __name__ == "__main__":
    main()
