# Figure 2 (paper section 5): fine-tune on Macondo v2, test on v1 prompts; the
# kNN-LM's datastore holds the v2 sentences under each checkpoint. One
# evaluation job per run (rules/children.smk), as for Figure 1.


rule figure2:
    input:
        runs=[
            children_results(overspecification_model(s))
            for s in config["overspecification"]["seeds"]
        ],
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
