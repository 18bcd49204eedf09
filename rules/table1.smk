# Table 1 (paper section 3), at every corpus LM scale point: LM vs kNN-LM
# perplexity, and the projection of p_knnlm onto f and f∘g (softmax bottleneck
# vs MLP hurdle), with the claims read off it (findings with 95% intervals).

# the validation grid feeds the projection only when it defines p_knnlm
TUNED = config["table1"]["projection"]["interpolation"] == "tuned"


rule knnlm_grid:
    input:
        knn_file("{model}", "{step}", "{key}", "valid"),
    output:
        csv=report(f"{T1}/grid.csv", caption="../report/grid.rst", category="Table 1"),
        png=report(f"{T1}/grid.png", caption="../report/grid.rst", category="Table 1"),
    log:
        f"{LOGS}/table1/{POINT}/grid.log",
    benchmark:
        f"{BENCH}/table1/{POINT}/grid.tsv"
    priority: 20
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "knnlm_grid"),
    params:
        lambdas=config["table1"]["grid"]["lambda"],
        temperatures=config["table1"]["grid"]["temperature"],
    script:
        "../scripts/knnlm_grid.py"


rule projection:
    input:
        **({"grid": f"{T1}/grid.csv"} if TUNED else {}),
        model=model_dir("{model}", "{step}"),
        examples=tokens("corpus_test"),
        found=knn_file("{model}", "{step}", "{key}", "test"),
    output:
        tokens=f"{T1}/projection_tokens.csv",
        traces=f"{T1}/projection_traces.csv",
        summary=f"{T1}/projection_summary.csv",
        png=report(
            f"{T1}/projection_traces.png",
            caption="../report/projection.rst",
            category="Table 1",
        ),
    log:
        f"{LOGS}/table1/{POINT}/projection.log",
    benchmark:
        f"{BENCH}/table1/{POINT}/projection.tsv"
    priority: 20
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed", "projection"),
    params:
        **windowing(),
        settings=canon(config["table1"]["projection"]),
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
    script:
        "../scripts/projection.py"


rule table1:
    input:
        model=model_dir("{model}", "{step}"),
        found=knn_file("{model}", "{step}", "{key}", "test"),
        grid=f"{T1}/grid.csv",
        projection=f"{T1}/projection_tokens.csv",
        summary=f"{T1}/projection_summary.csv",
        manifests=lambda w: datastore_files(w.model, w.step, w.key, "manifest"),
    output:
        csv=report(
            f"{T1}/table1.csv", caption="../report/table1.rst", category="Table 1"
        ),
        md=f"{T1}/table1.md",
        findings=f"{T1}/findings.csv",
    log:
        f"{LOGS}/table1/{POINT}/table1.log",
    benchmark:
        f"{BENCH}/table1/{POINT}/table1.tsv"
    priority: 20
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "table1"),
    params:
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        k=config["knn"]["k"],
        setting=config["table1"]["projection"]["interpolation"],
        scale=lambda w: point_scale(w.model, w.step, w.key),
        bootstrap=canon(config["findings"]),
    script:
        "../scripts/table1.py"
