"""kNN-LM evaluation overhead and datastore key-capture overhead, measured in one run.

ratio 1 = knnlm.evaluate (LM forward + keys + search + neighbour values) + interpolation
          / (bare LM forward + bare FAISS search of the same queries)      goal <= 1.2
ratio 2 = datastore.build (forward + key capture + float16 memmap writes)
          / bare forward over the same tokens                                goal <= 1.1
"""

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from knnlm_limits import datastore, knnlm, model
from knnlm_limits.index import Searcher
from knnlm_limits.tokens import blocks, pad_batch, batches_by_tokens


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--store-tokens", type=int, default=50_000)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    lm = model.build_model(args.vocab, args.layers, args.width, 4, 128, seed=0).to(model.best_device()).eval()
    store = blocks(rng.integers(0, args.vocab, args.store_tokens), 128)
    queries = blocks(rng.integers(0, args.vocab, args.eval_tokens), 128)

    with tempfile.TemporaryDirectory() as tmp:
        keys_path, values_path = Path(tmp) / "k.npy", Path(tmp) / "v.npy"
        datastore.build(lm, store, keys_path, values_path)
        keys, values = datastore.load(keys_path, values_path)
        index = faiss.IndexFlatL2(keys.shape[1])
        index.add(np.asarray(keys, dtype=np.float32))

        @torch.no_grad()
        def bare_forward(examples, body_only=False):
            """The LM forward alone; body_only: without the vocabulary head (what keys need)."""
            run = lm.transformer if body_only else lm
            for idx in batches_by_tokens(examples, 8192):
                ids, _ = pad_batch(examples, idx)
                run(input_ids=ids.to(model.device_of(lm)))

        q = knnlm.lm_and_queries(lm, queries)[1]
        t_forward = best_of(lambda: bare_forward(queries), args.repeat)
        t_search = best_of(lambda: index.search(q, args.k), args.repeat)

        def full_eval():
            found = knnlm.evaluate(lm, Searcher(keys_path, "Flat", index), values, queries, k=args.k)
            knnlm.knnlm_logprob(found, 0.25, 1.0)

        t_knnlm = best_of(full_eval, args.repeat)
        t_store_forward = best_of(lambda: bare_forward(store), args.repeat)
        t_store_body = best_of(lambda: bare_forward(store, body_only=True), args.repeat)
        t_store = best_of(lambda: datastore.build(lm, store, keys_path, values_path), args.repeat)

    print(f"device: {model.device_of(lm)}, torch threads: {torch.get_num_threads()}, "
          f"model {args.layers}x{args.width}, vocab {args.vocab}, datastore {len(keys)} keys, "
          f"{len(q)} queries, k={args.k}")
    print(f"LM forward {t_forward:.3f}s + FAISS search {t_search:.3f}s = {t_forward + t_search:.3f}s; "
          f"kNN-LM evaluation {t_knnlm:.3f}s")
    print(f"ratio kNN-LM / (forward + search) = {t_knnlm / (t_forward + t_search):.3f}  (goal <= 1.2)")
    print(f"datastore build {t_store:.3f}s vs bare forward {t_store_forward:.3f}s: "
          f"ratio = {t_store / t_store_forward:.3f}  (goal <= 1.1)")
    print(f"datastore build {t_store:.3f}s vs forward without the vocabulary head {t_store_body:.3f}s: "
          f"ratio = {t_store / t_store_body:.3f}  (the key capture and float16 writes alone)")


if __name__ == "__main__":
    main()
