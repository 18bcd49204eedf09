import numpy as np

from knnlm_limits import knnlm, model
from knnlm_limits.index import Searcher
from knnlm_limits.snake import logged, release_freed_memory
from knnlm_limits.tokens import load_stream, windows

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    p, inp = snakemake.params, snakemake.input
    lm = model.load_lm(inp.model)
    searcher = Searcher.open(inp.index, inp.key_file, {"nprobe": p.nprobe, "rerank": p.rerank,
                                                       "threads": snakemake.threads})
    values = np.load(inp.value_file, mmap_mode="r")
    for split in ("valid", "test"):
        examples = windows(load_stream(inp[split]), p.block_size, p.stride)
        ids_path = snakemake.output.test_ids if split == "test" else None  # the neighbours page's
        found = knnlm.evaluate(lm, searcher, values, examples, k=p.k, key=p.key, batch_tokens=p.batch_tokens,
                               log=log, ids_path=ids_path)
        found.save(snakemake.output[split])
        print(f"{split}: {len(found)} positions searched ({searcher.kind})", file=log)
        del found  # before the next split's arrays are allocated, not after
