import pandas as pd

from knnlm_limits import figures, io
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    table = pd.concat([pd.read_csv(path) for path in snakemake.input], ignore_index=True)
    fig, summary = getattr(figures, snakemake.params.figure)(table)
    io.save_figure(fig, snakemake.output.png, snakemake.output.pdf)
    io.write_csv(snakemake.output.csv, summary)
    io.write_csv(snakemake.output.rows, table)
    print(summary.to_string(index=False), file=log)
