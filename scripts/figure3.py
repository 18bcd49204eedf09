import pandas as pd

from knnlm_limits import children, figures, io, model
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    prompts = pd.read_csv(snakemake.input.prompts)
    lm = model.load_lm(snakemake.input.model)
    table = children.lm_table(lm, Examples.load(snakemake.input.examples), prompts, log=log)
    fig, summary = figures.figure3(table, snakemake.params.title)
    io.save_figure(fig, snakemake.output.png, snakemake.output.pdf)
    io.write_csv(snakemake.output.csv, summary)
    io.write_csv(snakemake.output.rows, table)
    print(summary.to_string(index=False), file=log)
