import pandas as pd

from knnlm_limits import figures, io, model, projection
from knnlm_limits.snake import logged
from knnlm_limits.tokens import Examples

with logged(snakemake) as log:
    p = snakemake.params
    lam, temperature = p.lam, p.temperature
    if p.settings["setting"] == "tuned":
        best = pd.read_csv(snakemake.input.grid).sort_values("perplexity").iloc[0]
        lam, temperature = float(best["lambda"]), float(best["temperature"])
    per_token, traces = projection.run(
        model.load_lm(snakemake.input.model), Examples.load(snakemake.input.examples),
        io.load_npz(snakemake.input.found), lam, temperature, p.settings, log=log,
    )
    per_token["lambda"], per_token["temperature"] = lam, temperature
    io.write_csv(snakemake.output.tokens, per_token)
    io.write_csv(snakemake.output.traces, traces)
    io.save_figure(figures.projection_traces(traces), snakemake.output.png)
