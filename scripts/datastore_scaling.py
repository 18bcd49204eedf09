# The datastore-size curve of a corpus kNN-LM point: its table, per-token log-probs, figure and finding.
from knnlm_limits import datastore_scaling, figures, findings, io, shards
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    p, inp, out = snakemake.params, snakemake.input, snakemake.output
    ends = shards.offsets(inp.manifests)[1:]  # entries of the first 1, 2, ... shards
    found = {size: {"valid": v, "test": t} for size, v, t in zip(p.sizes, inp.valid, inp.test)}
    table, tokens = datastore_scaling.curve(p.sizes, len(ends), [int(ends[s - 1]) for s in p.sizes], found,
                                            p.grid["lambda"], p.grid["temperature"], (p.lam, p.temperature),
                                            p.bootstrap)
    io.write_csv(out.csv, table)
    io.write_csv(out.tokens, tokens)
    estimate = datastore_scaling.gain_slope(tokens, table, "tuned", p.bootstrap["bootstrap_resamples"],
                                            p.bootstrap["seed"])
    rows = findings.datastore_growth(estimate, table, len(tokens), findings.scale_of(inp.model, p.scale))
    io.write_csv(out.findings, findings.to_frame(rows))
    io.save_figure(figures.datastore_scaling(table, p.title), out.png, out.pdf)
    print(table.to_string(), file=log)
    print(rows[0]["note"], f"slope {estimate[0]:+.3f} [{estimate[1]:+.3f}, {estimate[2]:+.3f}]", file=log)
