# The kNN-LM stage (rules/knnlm.smk): one function a rule, each unpacking the snakemake object
# for the package (knnlm_limits.knnlm, knnlm_limits.shards).
import numpy as np

from knnlm_limits.snake import logged, release_freed_memory

SPLITS = ("valid", "test")


def knn_queries(inp, out, p, threads, log):
    """One LM pass a split: its SearchResults without neighbours and its query keys."""
    from knnlm_limits import io, knnlm, model
    from knnlm_limits.tokens import load_stream, windows

    lm = model.load_lm(inp.model)
    for split in SPLITS:
        examples = windows(load_stream(inp[split]), p.block_size, p.stride)
        found, queries = knnlm.lm_and_queries(lm, examples, p.key, p.batch_tokens, log)
        found.save(out[f"lm_{split}"])
        io.save_npy(out[f"queries_{split}"], queries)
        print(f"{split}: {len(found)} positions", file=log)
        del found, queries  # before the next split's arrays are allocated, not after


def knn_shard_search(inp, out, p, threads, log):
    """Every query's k nearest entries of one shard; with an approximate index, also the exact
    neighbours of the fidelity sample of test queries (inspection.exact_sample)."""
    from pathlib import Path

    from knnlm_limits import inspection, shards
    from knnlm_limits.index import EXACT, Searcher

    offset = shards.read_manifest(inp.manifest)["offset"]
    values = np.load(inp.value_file, mmap_mode="r")
    settings = {"nprobe": p.nprobe, "rerank": p.rerank, "threads": threads}
    searcher = Searcher.of_shard(inp.key_file, inp.get("index"), settings)
    folder = Path(out[0])
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        queries = np.load(inp[f"queries_{split}"], mmap_mode="r")
        shards.answer_shard(searcher, values, queries, p.k, offset, folder, split, log=log)
        print(f"{split}: {len(queries)} queries searched ({searcher.kind})", file=log)
    test = np.load(inp.queries_test, mmap_mode="r")
    rows = inspection.fidelity_rows(len(test), p.fidelity_queries) if p.kind != EXACT else np.zeros(0, np.int64)
    exact = Searcher(inp.key_file, EXACT, threads=threads)
    shards.answer_shard(exact, values, test[rows], p.k, offset, folder, "sample", log=log)
    np.save(folder / "sample_rows.npy", rows)


def _merge(inp, out, p, log, with_extras: bool):
    from pathlib import Path

    from knnlm_limits import io, knnlm, shards

    answers = {split: [shards.read_answer(d, split) for d in inp.answers] for split in SPLITS}
    for split in SPLITS:
        found = knnlm.SearchResults.load(inp[f"lm_{split}"])
        ids_path = out.test_ids if with_extras and split == "test" else None
        merged = shards.merge_search(found, answers[split], p.k, out[split], ids_path, log)
        print(f"{split}: {len(merged)} positions, {merged.dists.shape[1]} neighbours each from "
              f"{len(inp.answers)} shards", file=log)
    if with_extras:
        rows = np.load(Path(inp.answers[0]) / "sample_rows.npy")
        sample = [shards.read_answer(d, "sample") for d in inp.answers]
        io.save_npz(out.exact_sample, **shards.merge_sample(sample, rows, p.k))


def knn_merge(inp, out, p, threads, log):
    _merge(inp, out, p, log, with_extras=True)


def knn_merge_first_shards(inp, out, p, threads, log):
    _merge(inp, out, p, log, with_extras=False)


release_freed_memory()  # streaming jobs: memory follows the batch
with logged(snakemake) as log:
    globals()[snakemake.rule](snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
