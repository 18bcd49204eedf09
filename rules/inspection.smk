# Looking inside the kNN-LM at every corpus LM scale point: the kNN-LM's gain over
# the LM by how often the target occurs in the training split (and its finding),
# read from the stored search results (no model runs).


rule knn_gains:
    input:
        found=knn_file("{model}", "{step}", "test"),
        train=tokens("corpus_train"),
        model=model_dir("{model}", "{step}"),  # its config.json: the scale point's shape
    output:
        **figure_outputs(f"{R}/table1/{{model}}/step-{{step}}", "gain_by_frequency"),
        tokens=f"{R}/table1/{{model}}/step-{{step}}/gain_tokens.csv",
        findings=f"{R}/table1/{{model}}/step-{{step}}/gain_findings.csv",
    log:
        f"{LOGS}/table1/{{model}}/step-{{step}}/gains.log",
    benchmark:
        f"{BENCH}/table1/{{model}}/step-{{step}}/gains.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "knn_gains"),
    params:
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        scale=lambda w: point_scale(w.model, w.step),
        bootstrap=canon(config["findings"]),
    script:
        "../scripts/knn_gains.py"
