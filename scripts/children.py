import pandas as pd

from knnlm_limits import children, io
from knnlm_limits.snake import logged

with logged(snakemake):
    p = snakemake.params
    prompts = pd.read_csv(snakemake.input.prompts)
    tables = []
    for step, path in zip(p.steps, snakemake.input.found):
        table = children.loglik_table(io.load_npz(path), prompts, p.lam, p.temperature)
        table.insert(3, "step", step)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    table["seed"], table["variant"] = p.seed, p.variant
    io.write_csv(snakemake.output[0], table)
