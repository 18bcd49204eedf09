import pandas as pd

from knnlm_limits import figures, io, knnlm, model, projection
from knnlm_limits.snake import logged, release_freed_memory
from knnlm_limits.tokens import load_stream, windows

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    p, out = snakemake.params, snakemake.output
    lam, temperature = p.lam, p.temperature
    if p.settings["interpolation"] == "tuned":
        lam, temperature = knnlm.tuned_setting(pd.read_csv(snakemake.input.grid))
    per_token, traces, summary = projection.run(
        model.load_lm(snakemake.input.model), windows(load_stream(snakemake.input.examples), p.block_size, p.stride),
        knnlm.SearchResults.load(snakemake.input.found), lam, temperature, p.settings, log=log,
    )
    per_token["lambda"], per_token["temperature"] = lam, temperature
    io.write_csv(out.tokens, per_token)
    io.write_csv(out.traces, traces)
    io.write_csv(out.summary, summary)
    io.save_figure(figures.projection_traces(traces, summary), out.png)
    print(summary.to_string(index=False), file=log)
