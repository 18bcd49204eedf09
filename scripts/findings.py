import pandas as pd

from knnlm_limits import figures, findings, io, tokenizer
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    p, inp = snakemake.params, snakemake.input
    vocab = len(tokenizer.vocabulary(inp.tokenizer))
    rows = [row for path in [*inp.table1, *inp.gains, *inp.fidelity, *inp.memory, *inp.scaling]
            for row in pd.read_csv(path).to_dict("records")]
    for shape, path in zip(p.memorization_shapes, inp.figure1):
        scale = {"model": f"memorization/{shape['name']}", "architecture": shape["architecture"],
                 "n_layer": shape["n_layer"], "n_embd": shape["n_embd"], "vocab_size": vocab}
        rows += findings.figure1(pd.read_csv(path), scale, p.settings["early_fraction"])
    rows += findings.figure2(pd.read_csv(inp.figure2), {"model": "{} step {}".format(*p.base_model)})
    for row in rows:  # Figures 1 and 2's kNN-LM claims: their datastores' key
        if row["finding"] in findings.MACONDO_KNN_FINDINGS:
            row["key"] = p.macondo_key
    rows += findings.figure3(pd.read_csv(inp.figure3), {"model": "{} step {}".format(*p.chat_model)},
                             p.settings["bootstrap_resamples"], p.settings["seed"])
    table = findings.to_frame(rows)
    io.write_csv(snakemake.output.csv, table)
    io.write_text(snakemake.output.md, "# Findings\n\n" + findings.markdown(table))
    by_scale = findings.by_scale(table)
    io.write_csv(snakemake.output.by_scale, by_scale)
    io.save_figure(figures.findings_by_scale(by_scale), snakemake.output.png)
    out = snakemake.output
    by_key = pd.concat([pd.read_csv(path) for path in inp.table1_rows], ignore_index=True)
    by_key = by_key[["model", "step", "key", "test_tokens", "test_ppl_lm", "test_ppl_knnlm_fixed",
                     "test_ppl_knnlm_tuned", "ppl_proj_f", "ppl_proj_fg"]]
    io.write_csv(out.keys_csv, by_key)
    io.save_figure(figures.perplexity_by_key(by_key), out.keys_png, out.keys_pdf)
    print(findings.markdown(table), file=log)
