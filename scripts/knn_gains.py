from knnlm_limits import figures, findings, inspection, io, knnlm
from knnlm_limits.snake import logged, release_freed_memory
from knnlm_limits.tokens import load_stream

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    p, inp, out = snakemake.params, snakemake.input, snakemake.output
    boot = (p.bootstrap["bootstrap_resamples"], p.bootstrap["seed"])
    tokens = inspection.per_token(knnlm.SearchResults.load(inp.found), load_stream(inp.train), p.lam, p.temperature)
    buckets = inspection.by_bucket(tokens, *boot)
    io.write_csv(out.tokens, tokens)
    io.write_csv(out.csv, buckets)
    scale = findings.scale_of(inp.model, p.scale)
    title = f"({scale['model']} step {scale['step']}, key {scale['key']})"
    io.save_figure(figures.gain_by_frequency(buckets, title), out.png, out.pdf)
    estimate = inspection.rare_minus_frequent(tokens, *boot)
    io.write_csv(out.findings, findings.to_frame(findings.knn_gains(estimate, len(tokens), scale)))
    print(buckets.to_string(index=False), file=log)
