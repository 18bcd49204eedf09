from knnlm_limits import index
from knnlm_limits.snake import logged, release_freed_memory

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    manifest = index.write(snakemake.output[0], snakemake.input.key_file, snakemake.params.settings, log=log)
    print(f"{manifest['keys']} keys: {manifest['kind']} (exact up to {manifest['exact_max_keys']} keys)", file=log)
