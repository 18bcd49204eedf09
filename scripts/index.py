# The index stage (rules/index.smk): the trained index with no keys, or one shard's copy of it.
from knnlm_limits import index
from knnlm_limits.snake import logged, release_freed_memory

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    inp, out, p = snakemake.input, snakemake.output[0], snakemake.params
    if snakemake.rule == "index_trained":
        manifest = index.write_trained(out, list(inp.key_files), p.factory, p.train_sample, log=log)
    else:
        manifest = index.write_shard(out, inp.trained, inp.key_file, log=log)
    print(manifest, file=log)
