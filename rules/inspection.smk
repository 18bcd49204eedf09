# Looking inside the kNN-LM at every corpus LM scale point: the kNN-LM's gain over
# the LM by how often the target occurs in the training split (and its finding),
# read from the stored search results (no model runs).


rule knn_gains:
    input:
        found=knn_file("{model}", "{step}", "{key}", "test"),
        train=tokens("corpus_train"),
        model=model_dir("{model}", "{step}"),  # its config.json: the scale point's shape
    output:
        **figure_outputs(T1, "gain_by_frequency"),
        tokens=f"{T1}/gain_tokens.csv",
        findings=f"{T1}/gain_findings.csv",
    log:
        f"{LOGS}/table1/{POINT}/gains.log",
    benchmark:
        f"{BENCH}/table1/{POINT}/gains.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "knn_gains"),
    params:
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        scale=lambda w: point_scale(w.model, w.step, w.key),
        bootstrap=canon(config["findings"]),
    script:
        "../scripts/knn_gains.py"


rule knn_neighbours:
    input:
        found=knn_file("{model}", "{step}", "{key}", "test"),
        ids=knn_ids_file("{model}", "{step}", "{key}"),
        positions=lambda w: datastore_files(w.model, w.step, w.key, "position_file"),
        train=tokens("corpus_train"),
        test=tokens("corpus_test"),
        tokenizer=f"{R}/data/tokenizer",
    output:
        csv=report(
            f"{T1}/neighbours.csv",
            caption="../report/neighbours.rst",
            category="Where retrieval helps",
        ),
        html=report(
            f"{T1}/neighbours.html",
            caption="../report/neighbours.rst",
            category="Where retrieval helps",
        ),
    log:
        f"{LOGS}/table1/{POINT}/neighbours.log",
    benchmark:
        f"{BENCH}/table1/{POINT}/neighbours.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "knn_neighbours"),
    params:
        **windowing(),
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        settings=canon(config["inspect"]),
        title=lambda w: f"{w.model} step {w.step}, key {w.key}",
    script:
        "../scripts/knn_neighbours.py"


# Where the corpus datastore is searched through an approximate index: its neighbours
# against the exact ones on knn.fidelity_queries sampled test queries (recall@k, the
# kNN-LM perplexity both ways and its finding). Empty tables where the search is exact.
rule search_fidelity:
    input:
        found=knn_file("{model}", "{step}", "{key}", "test"),
        ids=knn_ids_file("{model}", "{step}", "{key}"),
        exact=knn_exact_sample("{model}", "{step}", "{key}"),
        model=model_dir("{model}", "{step}"),  # its config.json: the scale point's shape
    output:
        csv=f"{T1}/fidelity.csv",
        findings=f"{T1}/fidelity_findings.csv",
    log:
        f"{LOGS}/table1/{POINT}/fidelity.log",
    benchmark:
        f"{BENCH}/table1/{POINT}/fidelity.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "search_fidelity"),
    params:
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        scale=lambda w: point_scale(w.model, w.step, w.key),
        bootstrap=canon(config["findings"]),
    script:
        "../scripts/search_fidelity.py"
