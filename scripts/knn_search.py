import numpy as np

from knnlm_limits import inspection, io, knnlm, model
from knnlm_limits.index import Searcher
from knnlm_limits.snake import logged, release_freed_memory
from knnlm_limits.tokens import load_stream, windows

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    p, inp, out = snakemake.params, snakemake.input, snakemake.output
    lm = model.load_lm(inp.model)
    searcher = Searcher.open(inp.index, inp.key_file, {"nprobe": p.nprobe, "rerank": p.rerank,
                                                       "threads": snakemake.threads})
    values = np.load(inp.value_file, mmap_mode="r")
    for split in ("valid", "test"):
        examples = windows(load_stream(inp[split]), p.block_size, p.stride)
        found, queries = knnlm.lm_and_queries(lm, examples, p.key, p.batch_tokens, log)
        # the test split's neighbour ids go to the neighbours page; its sampled queries are
        # also searched exactly when the index is approximate (search_fidelity)
        ids_path = out.test_ids if split == "test" else None
        found = knnlm.search_neighbours(searcher, values, found, queries, p.k, log, ids_path)
        found.save(out[split])
        io.save_npy(out[f"queries_{split}"], queries)  # for the memory and the frontier: no second LM pass
        print(f"{split}: {len(found)} positions searched ({searcher.kind})", file=log)
        if split == "test":
            io.save_npz(out.exact_sample, **inspection.exact_sample(searcher, queries, p.k, p.fidelity_queries))
        del found, queries  # before the next split's arrays are allocated, not after
