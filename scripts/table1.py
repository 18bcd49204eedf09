import pandas as pd

from knnlm_limits import figures, findings, io, knnlm, shards
from knnlm_limits.snake import logged, release_freed_memory

release_freed_memory()  # a streaming job: its memory follows its batch
with logged(snakemake) as log:
    p, inp = snakemake.params, snakemake.input
    found = knnlm.SearchResults.load(inp.found)
    proj = pd.read_csv(inp.projection)
    summary = pd.read_csv(inp.summary)
    lam, temperature = float(proj["lambda"].iloc[0]), float(proj["temperature"].iloc[0])
    tuned_lam, tuned_temperature = knnlm.tuned_setting(pd.read_csv(inp.grid))
    test_knnlm = knnlm.knnlm_logprob(found, lam, temperature)
    scale = findings.scale_of(inp.model, p.scale)
    row = {
        **scale,
        "setting": p.setting, "lambda": lam, "temperature": temperature, "k": p.k,
        "tokens": len(proj),
        "datastore_size": int(shards.offsets(inp.manifests)[-1]),
        # The four columns of the paper's Table 1 (and f's convex optimum), over the projected tokens.
        **{f"ppl_{col}": knnlm.perplexity(proj[col]) for col in ("lm", "knnlm", "proj_f", "proj_fg", "proj_f_reverse")},
        # The whole evaluated test set, fixed and validation-tuned (lambda, T).
        "test_tokens": len(found),
        "test_ppl_lm": knnlm.perplexity(found.lm_logprob),
        "test_ppl_knnlm_fixed": knnlm.perplexity(knnlm.knnlm_logprob(found, p.lam, p.temperature)),
        "tuned_lambda": tuned_lam, "tuned_temperature": tuned_temperature,
        "test_ppl_knnlm_tuned": knnlm.perplexity(knnlm.knnlm_logprob(found, tuned_lam, tuned_temperature)),
    }
    io.write_csv(snakemake.output.csv, pd.DataFrame([row]))
    rows = findings.table1(proj, found.lm_logprob, test_knnlm, summary, scale, p.setting,
                           p.bootstrap["bootstrap_resamples"], p.bootstrap["seed"])
    table = findings.to_frame(rows)
    io.write_csv(snakemake.output.findings, table)
    md = figures.table1_markdown(row) + (
        f"\nWhole evaluated test set ({row['test_tokens']} tokens): LM {row['test_ppl_lm']:.2f}, "
        f"kNN-LM {row['test_ppl_knnlm_fixed']:.2f} at λ = {p.lam:g}, T = {p.temperature:g}; "
        f"{row['test_ppl_knnlm_tuned']:.2f} at the validation-tuned λ = {tuned_lam:g}, T = {tuned_temperature:g}.\n\n"
        f"Projection solvers:\n\n{figures.markdown_table(summary)}\n\n"
        f"Findings at this scale point:\n\n{findings.markdown(table)}"
    )
    io.write_text(snakemake.output.md, md)
    print(md, file=log)
