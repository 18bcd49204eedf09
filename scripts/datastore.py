from knnlm_limits import datastore, model
from knnlm_limits.snake import logged, release_freed_memory
from knnlm_limits.tokens import load_stream, windows

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    p = snakemake.params
    lm = model.load_lm(snakemake.input.model)
    examples = windows(load_stream(snakemake.input.examples), p.block_size, p.stride)
    out = snakemake.output
    n = datastore.build(lm, examples, out.key_file, out.value_file, out.position_file, key=p.key,
                        batch_tokens=p.batch_tokens, log=log)
    print(f"{n} entries", file=log)
