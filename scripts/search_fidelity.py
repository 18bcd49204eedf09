# Approximate against exact neighbours on the sampled test queries: recall@k, perplexity both ways, the finding.
import numpy as np

from knnlm_limits import findings, inspection, io, knnlm
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    p, inp, out = snakemake.params, snakemake.input, snakemake.output
    table = inspection.fidelity(knnlm.SearchResults.load(inp.found), np.load(inp.ids, mmap_mode="r"),
                                io.load_npz(inp.exact), p.lam, p.temperature)
    io.write_csv(out.csv, table)
    estimate = inspection.approximate_minus_exact(table, p.bootstrap["bootstrap_resamples"], p.bootstrap["seed"])
    scale = findings.scale_of(inp.model, p.scale)
    io.write_csv(out.findings, findings.to_frame(findings.search_fidelity(estimate, table, scale)))
    if len(table):
        print(f"{len(table)} queries: recall@k {table.recall_at_k.mean():.4f}, kNN-LM perplexity approximate "
              f"minus exact {estimate[0]:+.3f} [{estimate[1]:+.3f}, {estimate[2]:+.3f}]", file=log)
    else:
        print("the search was exact: nothing to compare", file=log)
