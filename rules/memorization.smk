# Figure 1 (paper section 4): children log-likelihood on Macondo v1 at every
# checkpoint of models trained from scratch, with and without the last MLP, and
# the kNN-LM whose datastore holds the v1 sentences under the same checkpoint.
# One evaluation job per run (all its checkpoints: small datastores, searched in
# memory); lambda and T are applied by the figure.


rule memorization_eval:
    input:
        checkpoints=lambda w: run_checkpoints(
            memorization_model(w.shape, w.variant, w.seed), "memorization"
        ),
        prompts=tokens("prompts_v1"),
        sentences=tokens("macondo_v1"),
    output:
        f"{R}/children/memorization/{{shape}}/{{variant}}/seed-{{seed}}.npz",
    log:
        f"{LOGS}/children/memorization/{{shape}}/{{variant}}/seed-{{seed}}.log",
    benchmark:
        f"{BENCH}/children/memorization/{{shape}}/{{variant}}/seed-{{seed}}.tsv"
    group:
        "memorization_run"
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed", "memorization_eval"),
    params:
        steps=sorted(config["memorization"]["train"]["checkpoints"]),
        # LM-only runs (variants without a kNN-LM) read no kNN setting
        knn=lambda w: (
            knn_settings()
            if w.variant in config["memorization"]["knn_variants"]
            else None
        ),
    script:
        "../scripts/children.py"


rule figure1:
    input:
        runs=lambda w: expand(
            f"{R}/children/memorization/{w.shape}/{{variant}}/seed-{{seed}}.npz",
            variant=config["memorization"]["variants"],
            seed=config["memorization"]["seeds"],
        ),
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
