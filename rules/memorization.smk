# Figure 1 (paper section 4): children log-likelihood on Macondo v1 at every
# checkpoint of models trained from scratch, with and without the last MLP, and
# the kNN-LM whose datastore holds the v1 sentences under the same checkpoint.
# One evaluation job per run (rules/children.smk); lambda and T are applied here.


rule figure1:
    input:
        runs=lambda w: [
            children_results(memorization_model(w.shape, v, s))
            for v in config["memorization"]["variants"]
            for s in config["memorization"]["seeds"]
        ],
        prompts=rules.macondo.output.prompts,
    output:
        **figure_outputs(f"{R}/figure1/{{shape}}", "figure1"),
        rows=f"{R}/figure1/{{shape}}/children.csv",
    log:
        f"{LOGS}/figure1/{{shape}}.log",
    benchmark:
        f"{BENCH}/figure1/{{shape}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "figure1"),
    params:
        figure="figure1",
        runs=lambda w: [
            {"variant": v, "seed": s}
            for v in config["memorization"]["variants"]
            for s in config["memorization"]["seeds"]
        ],
        steps=sorted(config["memorization"]["train"]["checkpoints"]),
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        title=lambda w: f"{w.shape} ",
    script:
        "../scripts/children_figure.py"
