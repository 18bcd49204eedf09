# The datastore-size curve at every corpus kNN-LM point (Khandelwal et al. 2020: the gain
# grows with the datastore): the kNN-LM over the first s shards (knn.datastore_sizes), from
# merges of the shards' answers (rules/knnlm.smk, no new search), (lambda, T) tuned on
# validation at each size, and the finding knn_gain_grows_with_datastore.


rule datastore_scaling:
    input:
        valid=lambda w: [
            first_shards_file(w.model, w.step, w.key, s, "valid")
            for s in datastore_sizes(config["knn"])
        ],
        test=lambda w: [
            first_shards_file(w.model, w.step, w.key, s, "test")
            for s in datastore_sizes(config["knn"])
        ],
        manifests=lambda w: datastore_files(w.model, w.step, w.key, "manifest"),
        model=model_dir("{model}", "{step}"),  # its config.json: the scale point's shape
    output:
        **figure_outputs(T1, "datastore_scaling"),
        tokens=f"{T1}/datastore_scaling_tokens.csv",
        findings=f"{T1}/datastore_scaling_findings.csv",
    log:
        f"{LOGS}/table1/{POINT}/datastore_scaling.log",
    benchmark:
        f"{BENCH}/table1/{POINT}/datastore_scaling.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "datastore_scaling"),
    params:
        sizes=datastore_sizes(config["knn"]),
        grid=canon(config["table1"]["grid"]),
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        scale=lambda w: point_scale(w.model, w.step, w.key),
        bootstrap=canon(config["findings"]),
        title=lambda w: f"({w.model} step {w.step}, key {w.key})",
    script:
        "../scripts/datastore_scaling.py"
