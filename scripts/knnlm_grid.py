from knnlm_limits import figures, io, knnlm
from knnlm_limits.snake import logged, release_freed_memory

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    grid = knnlm.grid(knnlm.SearchResults.load(snakemake.input[0]), snakemake.params.lambdas, snakemake.params.temperatures)
    io.write_csv(snakemake.output.csv, grid)
    io.save_figure(figures.grid_heatmap(grid), snakemake.output.png)
    print(grid.sort_values("perplexity").head().to_string(index=False), file=log)
