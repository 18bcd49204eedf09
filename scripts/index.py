from knnlm_limits import index
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    import faiss

    faiss.omp_set_num_threads(snakemake.threads)
    built = index.build(snakemake.input.key_file, snakemake.params.factory, snakemake.params.train_sample, log=log)
    index.write(built, snakemake.output[0])
    print(f"{built.ntotal} keys in a {snakemake.params.factory} index", file=log)
