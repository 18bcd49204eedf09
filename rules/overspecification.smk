# Figure 2 (paper section 5): fine-tune on Macondo v2, test on v1 prompts; the
# kNN-LM's datastore holds the v2 sentences under each checkpoint. One
# evaluation job per run, as for Figure 1.


rule overspecification_eval:
    input:
        checkpoints=lambda w: run_checkpoints(
            overspecification_model(w.seed), "overspecification"
        ),
        prompts=tokens("prompts_v1"),
        sentences=tokens("macondo_v2"),
    output:
        f"{R}/children/overspecification/seed-{{seed}}.npz",
    log:
        f"{LOGS}/children/overspecification/seed-{{seed}}.log",
    benchmark:
        f"{BENCH}/children/overspecification/seed-{{seed}}.tsv"
    priority: 10
    group:
        "overspecification_run"
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed", "overspecification_eval"),
    params:
        steps=sorted(config["overspecification"]["train"]["checkpoints"]),
        knn=knn_settings(),
    script:
        "../scripts/children.py"


rule figure2:
    input:
        runs=expand(
            f"{R}/children/overspecification/seed-{{seed}}.npz",
            seed=config["overspecification"]["seeds"],
        ),
        prompts=rules.macondo.output.prompts,
    output:
        **figure_outputs(f"{R}/figure2", "figure2"),
        rows=f"{R}/figure2/children.csv",
    log:
        f"{LOGS}/figure2.log",
    benchmark:
        f"{BENCH}/figure2.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "figure2"),
    params:
        figure="figure2",
        runs=[
            {"variant": "full", "seed": s}
            for s in config["overspecification"]["seeds"]
        ],
        steps=sorted(config["overspecification"]["train"]["checkpoints"]),
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        title=f"of {config['overspecification']['base_model']}",
    script:
        "../scripts/children_figure.py"
