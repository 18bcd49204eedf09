"""Seconds per candidate of merging the shards' answers (shards.merge_rows): MERGE_ROWS queries,
k = 1,024 neighbours from each of 2, 4 and 16 shards, distances sorted within a shard as a
search job writes them. The cost model's `merge_seconds_per_candidate` is read off this.

    .venv/bin/python benchmarks/shard_merge.py
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from knnlm_limits import shards  # noqa: E402


def answers(n_shards: int, rows: int, k: int, rng) -> list[dict]:
    out = []
    for s in range(n_shards):
        dists = np.sort(rng.random((rows, k), dtype=np.float32) * 100, axis=1)
        ids = s * 10**6 + np.sort(rng.integers(0, 10**6, (rows, k)), axis=1)
        out.append({"dists": dists, "ids": ids, "values": rng.integers(0, 50_000, (rows, k)).astype(np.int32)})
    return out


def main() -> None:
    rng, k, rows = np.random.default_rng(0), 1024, shards.MERGE_ROWS
    print(f"{'shards':>6} {'candidates':>11} {'seconds':>8} {'ns/candidate':>13}")
    for n in (2, 4, 16):
        parts = answers(n, rows, k, rng)
        shards.merge_rows(parts, k)  # warm-up
        best = min(_timed(lambda: shards.merge_rows(parts, k)) for _ in range(3))
        print(f"{n:>6} {rows * n * k:>11,} {best:>8.3f} {best / (rows * n * k) * 1e9:>13.1f}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
