# Findings: every claim of the paper with its 95% interval and the rule that
# decides whether it holds, at every scale point; the projection gaps against
# model width.


rule findings:
    input:
        table1=[f"{table1_dir(*point)}/findings.csv" for point in knn_points()],
        gains=[f"{table1_dir(*point)}/gain_findings.csv" for point in knn_points()],
        fidelity=[
            f"{table1_dir(*point)}/fidelity_findings.csv" for point in knn_points()
        ],
        memory=[f"{table1_dir(*point)}/memory_findings.csv" for point in knn_points()],
        scaling=[
            f"{table1_dir(*point)}/datastore_scaling_findings.csv"
            for point in knn_points()
        ],
        table1_rows=[f"{table1_dir(*point)}/table1.csv" for point in knn_points()],
        figure1=[
            f"{R}/figure1/{s['name']}/children.csv"
            for s in config["memorization"]["shapes"]
        ],
        figure2=rules.figure2.output.rows,
        figure3=rules.figure3.output.rows,
        tokenizer=f"{R}/data/tokenizer",
    output:
        **{f"keys_{k}": v for k, v in figure_outputs(R, "perplexity_by_key").items()},
        csv=report(
            f"{R}/findings.csv", caption="../report/findings.rst", category="Findings"
        ),
        md=f"{R}/findings.md",
        by_scale=f"{R}/findings_by_scale.csv",
        png=report(
            f"{R}/findings_by_scale.png",
            caption="../report/findings.rst",
            category="Findings",
        ),
    log:
        f"{LOGS}/findings.log",
    benchmark:
        f"{BENCH}/findings.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "findings"),
    params:
        settings=canon(config["findings"]),
        memorization_shapes=canon(config["memorization"]["shapes"]),
        # the models Figures 2 and 3 fine-tuned, as (model, step)
        base_model=base_model(config["overspecification"]["base_model"]),
        chat_model=base_model(config["chat"]["model"]),
        macondo_key=knn_settings()["key"],
    script:
        "../scripts/findings.py"
