from knnlm_limits import datastore, model
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    lm = model.load_lm(snakemake.input.model)
    n = datastore.build(
        lm, Examples.load(snakemake.input.examples), snakemake.output.key_file, snakemake.output.value_file,
        key=snakemake.params.key, batch_tokens=snakemake.params.batch_tokens, log=log,
    )
    print(f"{n} entries", file=log)
