# The parametric-memory stage (rules/memory.smk): one function per rule, each unpacking the
# snakemake object for the package (knnlm_limits.memory, knnlm_limits.memory_mlp).

import numpy as np

from knnlm_limits.snake import logged, release_freed_memory

SPLITS = ("valid", "test")


def memory_target_queries(inp, out, p, threads, log):
    from knnlm_limits import memory
    from knnlm_limits.shards import ShardedRows

    memory.check_one_entry_per_position(inp.position_files)
    n = len(ShardedRows(inp.key_files))
    rows = memory.kl_sample(n, p.n, p.seed)
    memory.write_kl_queries(out[0], inp.key_files, rows)
    print(f"{len(rows)} of {n} entries sampled for a kNN target", file=log)


def memory_target_shard(inp, out, p, threads, log):
    from pathlib import Path

    from knnlm_limits import shards
    from knnlm_limits.index import Searcher

    searcher = Searcher.of_shard(inp.key_file, inp.get("index"),
                                 {"nprobe": p.nprobe, "rerank": p.rerank, "threads": threads})
    queries = np.load(Path(inp.queries) / "keys.npy", mmap_mode="r")
    offset = shards.read_manifest(inp.manifest)["offset"]
    Path(out[0]).mkdir(parents=True, exist_ok=True)
    # k + 1: a sampled entry of this shard finds itself, which the merge drops
    shards.answer_shard(searcher, np.load(inp.value_file, mmap_mode="r"), queries, p.k + 1, offset, out[0], "kl",
                        log=log)
    print(f"{len(queries)} sampled entries answered by shard entries {offset}.. ({searcher.kind})", file=log)


def memory_targets(inp, out, p, threads, log):
    from pathlib import Path

    from knnlm_limits import memory, shards

    rows = np.load(Path(inp.queries) / "rows.npy")
    answers = [shards.read_answer(d, "kl") for d in inp.answers]
    memory.write_kl_targets(out[0], rows, answers, p.k, p.temperature, log)
    print(f"{len(rows)} entries: their p_kNN over the other entries, from {len(answers)} shards", file=log)


def train_memory(inp, out, p, threads, log):
    from knnlm_limits import memory_mlp

    memory_mlp.train_and_evaluate(
        inp.key_files, inp.value_files, inp.manifests, inp.get("kl"), inp.lm, {s: inp[f"queries_{s}"] for s in SPLITS},
        {s: inp[f"found_{s}"] for s in SPLITS}, inp.get("indexes"), out.model, out.logprobs, out.footprint, out.costs,
        p.work_dir, p.shape, p.alpha, p.train, p.search, p.timing_queries, threads, log)


def more_training(inp, out, p, threads, log):
    from knnlm_limits import memory_mlp

    memory_mlp.more_training(inp.model, inp.examples, inp.manifests, {s: inp[s] for s in SPLITS}, out.model,
                             out.logprobs, p.work_dir, p.step, p.train, p.seed, p.windowing,
                             p.memory_shape, p.budget, p.batch_tokens, log)


def frontier_trained(inp, out, p, threads, log):
    from knnlm_limits import index

    print(index.write_trained(out[0], list(inp.key_files), p.factory, p.train_sample, log=log), file=log)


def frontier_shard(inp, out, p, threads, log):
    from knnlm_limits import memory

    written = memory.frontier_shard(inp.trained, inp.key_file, inp.value_file, inp.manifest,
                                    {s: inp[f"queries_{s}"] for s in SPLITS}, out.index, out.answer, p.k, p.nprobe,
                                    threads, log)
    print(f"{written['keys']} keys as {written['kind']} codes; queries answered", file=log)


def frontier_pq(inp, out, p, threads, log):
    from knnlm_limits import memory

    memory.frontier_merge({s: inp[f"lm_{s}"] for s in SPLITS}, inp.answers, p.k, {s: out[s] for s in SPLITS}, log)


def memory_table(inp, out, p, threads, log):
    import pandas as pd

    from knnlm_limits import figures, findings, io, knnlm, memory

    found = {s: inp[f"found_{s}"] for s in SPLITS}
    memories = {m["name"]: {"objective": m["objective"], "logprobs": io.load_npz(lp),
                            "footprint": pd.read_csv(f).iloc[0].to_dict(), "costs": pd.read_csv(c)}
                for m, lp, f, c in zip(p.memories, inp.logprobs, inp.footprints, inp.costs)}
    more = io.load_npz(inp.more) if "more" in inp.keys() else None
    # a PQ datastore is searched without re-ranking: its shards' codes and values, no keys
    shards = len(inp.value_files)
    pq_indexes = [inp.pq_index[i : i + shards] for i in range(0, len(inp.pq_index), shards)]
    pq = {code: {"valid": v, "test": t, "bytes": memory.datastore_bytes(inp.key_files, inp.value_files, indexes, kind,
                                                                         False)}
          for code, kind, v, t, indexes in zip(p.codes, p.frontier_kinds, inp.pq_valid, inp.pq_test, pq_indexes)}
    index_kind = p.index_kind
    datastore_bytes = memory.datastore_bytes(inp.key_files, inp.value_files, inp.get("indexes", []), p.index_kind,
                                             p.rerank)
    tuned = knnlm.tuned_setting(pd.read_csv(inp.grid))
    t = memory.tables(found, (p.lam, p.temperature), tuned, memories, more, pq, datastore_bytes, index_kind,
                      p.lambdas, p.grid, p.bootstrap)
    scale = findings.scale_of(inp.model, p.scale)
    rows = findings.memory(t["tokens"], t["table"], p.main, p.control, p.head, scale,
                           p.bootstrap["bootstrap_resamples"], p.bootstrap["seed"])
    table = findings.to_frame(rows)
    io.write_csv(out.table, t["table"].assign(**{k: scale.get(k) for k in ("model", "step", "key")}))
    io.write_csv(out.tokens, t["tokens"])
    io.write_csv(out.grid, t["grid"])
    io.write_csv(out.costs, t["costs"])
    io.write_csv(out.findings, table)
    io.write_csv(out.csv, t["frontier"])
    io.save_figure(figures.frontier(t["frontier"], f"({p.title})"), out.png, out.pdf)
    md = (f"# A parametric memory in place of the datastore: {p.title}\n\n"
          f"{figures.markdown_table(t['table'])}\nQuery time, seconds per 1,000 test queries: in each memory's job "
          f"the search and the memory timed alike, on the device and with the threads of each row:\n\n"
          f"{figures.markdown_table(t['costs'])}\n"
          f"Findings at this point:\n\n{findings.markdown(table)}")
    io.write_text(out.md, md)
    print(md, file=log)


release_freed_memory()  # streaming jobs: memory follows the batch
with logged(snakemake) as log:
    globals()[snakemake.rule](snakemake.input, snakemake.output, snakemake.params, snakemake.threads, log)
