import pandas as pd

from knnlm_limits import children, io, knnlm, model
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    prompts = pd.read_csv(snakemake.input.prompts)
    examples = Examples.load(snakemake.input.examples)
    found = knnlm.lm_and_queries(model.load_lm(snakemake.input.model), examples, log=log)
    table = prompts[["parent", "child", "n_children"]].copy()
    table["method"] = "lm"
    table["loglik"] = children.per_example(found, len(prompts), found["lm_logprob"].astype(float))
    io.write_csv(snakemake.output[0], table)
