# kNN-LM stage: LM log-probs and each scored position's k neighbours in the
# corpus datastore, for the validation and test splits (one job: one model load).
# The interpolation (lambda, T) is applied downstream, so changing it reruns no search.


rule knn_search:
    input:
        **datastore("{model}", "{step}", "{key}"),
        model=model_dir("{model}", "{step}"),
        index=index_dir("{model}", "{step}", "{key}"),
        valid=tokens("corpus_valid"),
        test=tokens("corpus_test"),
    output:
        **search_queries("{model}", "{step}", "{key}"),
        valid=knn_file("{model}", "{step}", "{key}", "valid"),
        test=knn_file("{model}", "{step}", "{key}", "test"),
        test_ids=knn_ids_file("{model}", "{step}", "{key}"),
        exact_sample=knn_exact_sample("{model}", "{step}", "{key}"),
    log:
        f"{LOGS}/knn/{POINT}.log",
    benchmark:
        f"{BENCH}/knn/{POINT}.tsv"
    priority: 20
    conda:
        ENV
    # faiss-cpu searches here, and the LM pass over the evaluation splits is small:
    # a CPU node's job ("index" resources), no GPU held while FAISS runs
    threads: threads("index")
    resources:
        **res("index", "knn_search"),
    params:
        **windowing(),
        k=config["knn"]["k"],
        key=lambda w: w.key,
        nprobe=config["knn"]["nprobe"],
        rerank=config["knn"]["rerank"],
        batch_tokens=config["knn"]["batch_tokens"],
        fidelity_queries=config["knn"]["fidelity_queries"],
    script:
        "../scripts/knn_search.py"
