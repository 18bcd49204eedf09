# Figure 1 or 2: children log-likelihood tables of every run (lambda, T applied here), the figure.
import pandas as pd

from knnlm_limits import children, figures, io
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    p = snakemake.params
    prompts = pd.read_csv(snakemake.input.prompts)
    tables = []
    for path, run in zip(snakemake.input.runs, p.runs):
        table = children.run_table(children.load_run(path), p.steps, prompts, p.lam, p.temperature)
        tables.append(table.assign(seed=run["seed"], variant=run["variant"]))
    table = pd.concat(tables, ignore_index=True)
    fig, summary = getattr(figures, p.figure)(table, p.title)
    io.save_figure(fig, snakemake.output.png, snakemake.output.pdf)
    io.write_csv(snakemake.output.csv, summary)
    io.write_csv(snakemake.output.rows, table)
    print(summary.to_string(index=False), file=log)
