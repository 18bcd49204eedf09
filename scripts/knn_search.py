import numpy as np

from knnlm_limits import index, io, knnlm, model
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    import faiss

    faiss.omp_set_num_threads(snakemake.threads)
    p = snakemake.params
    found = knnlm.evaluate(
        model.load_lm(snakemake.input.model), index.read(snakemake.input.index, p.nprobe),
        np.load(snakemake.input.value_file, mmap_mode="r"), Examples.load(snakemake.input.examples),
        k=p.k, key=p.key, batch_tokens=p.batch_tokens, log=log,
    )
    io.save_npz(snakemake.output[0], **found)
    print(f"{len(found['targets'])} positions searched", file=log)
