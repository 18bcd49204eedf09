import numpy as np
import pandas as pd

from knnlm_limits import figures, io, knnlm
from knnlm_limits.snake import logged

with logged(snakemake) as log:
    p = snakemake.params
    found = io.load_npz(snakemake.input.found)
    grid = pd.read_csv(snakemake.input.grid).sort_values("perplexity")
    proj = pd.read_csv(snakemake.input.projection)
    best = grid.iloc[0]
    row = {
        "setting": p.setting,
        "lambda": float(proj["lambda"].iloc[0]),
        "temperature": float(proj["temperature"].iloc[0]),
        "k": p.k,
        "tokens": len(proj),
        "datastore_size": int(np.load(snakemake.input.key_file, mmap_mode="r").shape[0]),
        # The four columns of the paper's Table 1, over the projected tokens.
        "ppl_lm": knnlm.perplexity(proj.lm),
        "ppl_knnlm": knnlm.perplexity(proj.knnlm),
        "ppl_proj_f": knnlm.perplexity(proj.proj_f),
        "ppl_proj_fg": knnlm.perplexity(proj.proj_fg),
        # The whole evaluated test set, fixed and validation-tuned (lambda, T).
        "test_tokens": len(found["targets"]),
        "test_ppl_lm": knnlm.perplexity(found["lm_logprob"]),
        "test_ppl_knnlm_fixed": knnlm.perplexity(knnlm.knnlm_logprob(found, p.lam, p.temperature)),
        "tuned_lambda": float(best["lambda"]),
        "tuned_temperature": float(best["temperature"]),
        "test_ppl_knnlm_tuned": knnlm.perplexity(knnlm.knnlm_logprob(found, best["lambda"], best["temperature"])),
    }
    io.write_csv(snakemake.output.csv, pd.DataFrame([row]))
    md = figures.table1_markdown(row) + (
        f"\nWhole evaluated test set ({row['test_tokens']} tokens): LM {row['test_ppl_lm']:.2f}, "
        f"kNN-LM {row['test_ppl_knnlm_fixed']:.2f} at λ = {p.lam:g}, T = {p.temperature:g}; "
        f"{row['test_ppl_knnlm_tuned']:.2f} at the validation-tuned λ = {row['tuned_lambda']:g}, "
        f"T = {row['tuned_temperature']:g}.\n"
    )
    io.write_text(snakemake.output.md, md)
    print(md, file=log)
