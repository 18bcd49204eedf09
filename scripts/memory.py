# The parametric-memory stage (rules/memory.smk): one function per rule, each unpacking the
# snakemake object for the package (knnlm_limits.memory, knnlm_limits.memory_mlp).

import numpy as np

from knnlm_limits.snake import logged, release_freed_memory

SPLITS = ("valid", "test")


def memory_targets(inp, out, p, threads, log):
    from knnlm_limits import memory
    from knnlm_limits.index import Searcher

    memory.check_one_entry_per_position(inp.position_file)
    values = np.load(inp.value_file, mmap_mode="r")
    rows = memory.kl_sample(len(values), p.n, p.seed)
    searcher = Searcher.open(inp.index, inp.key_file, {"nprobe": p.nprobe, "rerank": p.rerank, "threads": threads})
    memory.write_kl_targets(out[0], searcher, inp.key_file, values, rows, p.k, p.temperature, log)
    print(f"{len(rows)} of {len(values)} entries: their p_kNN over the other entries ({searcher.kind})", file=log)


def train_memory(inp, out, p, threads, log):
    from knnlm_limits import memory_mlp

    memory_mlp.train_and_evaluate(
        inp.key_file, inp.value_file, inp.get("kl"), inp.lm, {s: inp[f"queries_{s}"] for s in SPLITS},
        {s: inp[f"found_{s}"] for s in SPLITS}, inp.index, out.model, out.logprobs, out.footprint, out.costs,
        p.work_dir, p.shape, p.alpha, p.train, p.search, p.timing_queries, threads, log)


def more_training(inp, out, p, threads, log):
    from knnlm_limits import memory_mlp

    memory_mlp.more_training(inp.model, inp.examples, inp.value_file, {s: inp[s] for s in SPLITS}, out.model,
                             out.logprobs, p.work_dir, p.step, p.train, p.seed, p.windowing,
                             p.memory_shape, p.budget, p.batch_tokens, log)


def frontier_pq(inp, out, p, threads, log):
    from knnlm_limits import memory

    memory.frontier_search(inp.key_file, inp.value_file, {s: inp[f"queries_{s}"] for s in SPLITS},
                           {s: inp[f"found_{s}"] for s in SPLITS}, out.index, {s: out[s] for s in SPLITS}, p.factory,
                           p.train_sample, p.k, p.nprobe, threads, log)


def memory_table(inp, out, p, threads, log):
    import pandas as pd

    from knnlm_limits import figures, findings, io, knnlm, memory
    from knnlm_limits.index import read_manifest

    found = {s: inp[f"found_{s}"] for s in SPLITS}
    memories = {m["name"]: {"objective": m["objective"], "logprobs": io.load_npz(lp),
                            "footprint": pd.read_csv(f).iloc[0].to_dict(), "costs": pd.read_csv(c)}
                for m, lp, f, c in zip(p.memories, inp.logprobs, inp.footprints, inp.costs)}
    more = io.load_npz(inp.more) if "more" in inp.keys() else None
    # a PQ datastore is searched without re-ranking: its codes and values, no keys
    pq = {code: {"valid": v, "test": t, "bytes": memory.datastore_bytes(inp.key_file, inp.value_file, index, False)}
          for code, v, t, index in zip(p.codes, inp.pq_valid, inp.pq_test, inp.pq_index)}
    index_kind = read_manifest(inp.index)["kind"]
    datastore_bytes = memory.datastore_bytes(inp.key_file, inp.value_file, inp.index, p.rerank)
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
