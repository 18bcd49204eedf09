import pandas as pd

from knnlm_limits import children, io, model
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    p = snakemake.params
    prompts = pd.read_csv(snakemake.input.prompts)
    examples = Examples.load(snakemake.input.examples)
    tables = []
    for i, step in enumerate(p.steps):
        if "found" in snakemake.input.keys():
            table = children.loglik_table(io.load_npz(snakemake.input.found[i]), prompts, p.lam, p.temperature)
        else:
            table = children.lm_table(model.load_lm(snakemake.input.models[i]), examples, prompts, log=log)
        table.insert(3, "step", step)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    table["seed"], table["variant"] = p.seed, p.variant
    io.write_csv(snakemake.output[0], table)
