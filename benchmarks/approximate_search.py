"""Approximate search on a real-text datastore: time, recall and the kNN-LM perplexity it gives.

On a finished run's corpus datastore (by default the default run's, WikiText-2),
in one run: exact search (the reference), SQfp16, and IVF-PQ factories at a few
nprobe, each with and without exact re-ranking from the float16 keys. For each:
search seconds per query, recall@k against exact search (the share of the exact
k nearest found), and the test perplexity of the kNN-LM it gives (lambda, T from
the run's config). Writes benchmarks/out/approximate_search.{csv,png}.

    .venv/bin/python benchmarks/approximate_search.py results [--queries 2048]

Xu et al. (2023) found approximate search can lower kNN-LM perplexity; the table says
whether it does here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import yaml

from knnlm_limits import index, io, knnlm, model
from knnlm_limits.shards import ShardedRows
from knnlm_limits.figures import plt
from knnlm_limits.tokens import load_stream, windows

FACTORIES = ["SQfp16", "IVF256,PQ32", "IVF1024,PQ32", "IVF1024,PQ16"]
NPROBES = [1, 8, 32]


def first_point(results: Path, key: str):
    """(model folder, its datastore's shard folders in order) of the run's first corpus LM (its
    key's, `key`)."""
    for model_dir in sorted((results / "models" / "corpus_lm").glob("*/step-*")):
        rel = model_dir.relative_to(results / "models")
        for sharding in sorted((results / "datastores" / rel / key).glob("*-shards")):
            shards = sorted(sharding.glob("shard-*"), key=lambda f: int(f.name.split("-")[1]))
            if shards and all((f / "keys.npy").is_file() for f in shards):
                return model_dir, shards
    raise SystemExit(f"no corpus LM datastore under {results}: run the workflow first")


def recall(ids: np.ndarray, exact_ids: np.ndarray) -> float:
    hits = [len(np.intersect1d(a[a >= 0], b)) for a, b in zip(ids, exact_ids)]
    return float(np.mean(hits) / exact_ids.shape[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--queries", type=int, default=2048, help="test positions searched")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    cfg = yaml.safe_load(args.config.read_text())
    k, lam, temperature = cfg["knn"]["k"], cfg["knn"]["lambda"], cfg["knn"]["temperature"]
    block, stride = cfg["corpus"]["block_size"], cfg["corpus"].get("stride")

    key = cfg["knn"]["keys"][0]
    model_dir, shards = first_point(args.results, key)
    lm = model.load_lm(str(model_dir))
    test = windows(load_stream(args.results / "data/tokens/corpus_test.npz"), block, stride)
    found, queries = knnlm.lm_and_queries(lm, test, key)
    n = min(args.queries, len(found))
    queries = queries[:n]
    # the datastore whole: its shards' files read as one (ids are global)
    keys_file = [f / "keys.npy" for f in shards]
    values = np.asarray(ShardedRows([f / "values.npy" for f in shards]))
    print(f"{model_dir.relative_to(args.results)}: {ShardedRows(keys_file).shape} keys in {len(shards)} shards, "
          f"{n} queries, k = {k}")

    def measure(name, nprobe, rerank_exact, search):
        t0 = time.perf_counter()
        dists, ids = search()
        seconds = time.perf_counter() - t0
        if rerank_exact:
            t0 = time.perf_counter()
            dists, ids = index.rerank(keys_file, queries, dists, ids)
            seconds += time.perf_counter() - t0
        nbr = knnlm.neighbour_values(values, ids)
        run = knnlm.SearchResults(found.targets[:n], found.lm_logprob[:n], found.example[:n], dists, nbr)
        return {"index": name, "nprobe": nprobe, "rerank": rerank_exact, "ms_per_query": 1000 * seconds / n,
                "recall_at_k": recall(ids, exact_ids), "perplexity": knnlm.perplexity(knnlm.knnlm_logprob(run, lam, temperature))}

    _, exact_ids = index.exact_search(keys_file, queries, k)
    rows = [measure("exact", None, False, lambda: index.exact_search(keys_file, queries, k))]
    rows[0]["recall_at_k"] = 1.0
    for factory in FACTORIES:
        built = index.build(keys_file, factory, train_sample=100_000)
        for nprobe in NPROBES if factory.startswith("IVF") else [None]:
            if nprobe:
                faiss.extract_index_ivf(built).nprobe = nprobe
            for rerank_exact in (False, True) if factory != "SQfp16" else (False,):
                rows.append(measure(factory, nprobe, rerank_exact, lambda: built.search(queries, k)))
                print(pd.DataFrame([rows[-1]]).to_string(index=False, header=len(rows) == 2))
    table = pd.DataFrame(rows)
    lm_ppl = knnlm.perplexity(found.lm_logprob[:n])
    out = Path(__file__).resolve().parent / "out"
    io.write_csv(out / "approximate_search.csv", table)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (name, rerank_exact), rows_of in table.groupby(["index", "rerank"], sort=False):
        ax.plot(rows_of.ms_per_query, rows_of.perplexity, "o-" if len(rows_of) > 1 else "s",
                label=f"{name}{' + exact re-rank' if rerank_exact else ''}")
    ax.axhline(table.perplexity.iloc[0], color="k", lw=0.8, ls="--", label="exact search")
    ax.set_xscale("log")
    ax.set(xlabel="search time per query (ms, log)", ylabel="kNN-LM test perplexity",
           title=f"Approximate search (LM alone: {lm_ppl:.1f}); points: nprobe {NPROBES}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    io.save_figure(fig, out / "approximate_search.png")
    print(table.to_string(index=False))
    best = table.loc[table.perplexity.idxmin()]
    print(f"LM alone {lm_ppl:.2f}; exact kNN-LM {table.perplexity.iloc[0]:.2f}; lowest: {best['index']} "
          f"nprobe {best['nprobe']} rerank {best['rerank']} at {best['perplexity']:.2f}")


if __name__ == "__main__":
    main()
