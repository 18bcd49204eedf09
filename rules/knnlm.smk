# kNN-LM stage: one LM pass over the validation and test splits (log-probs and query keys),
# then every query's k nearest entries: a search job a shard, one merge (knnlm_limits.shards).
# The interpolation (lambda, T) is applied downstream, so changing it reruns no search; the
# first s shards' answers merged alone give the datastore-size curve (no second search).


rule knn_queries:
    input:
        model=model_dir("{model}", "{step}"),
        valid=tokens("corpus_valid"),
        test=tokens("corpus_test"),
    output:
        **search_queries("{model}", "{step}", "{key}"),
        lm_valid=lm_pass_file("{model}", "{step}", "{key}", "valid"),
        lm_test=lm_pass_file("{model}", "{step}", "{key}", "test"),
    log:
        f"{LOGS}/knn/{POINT}/queries.log",
    benchmark:
        f"{BENCH}/knn/{POINT}/queries.tsv"
    priority: 20
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed", "knn_queries"),
    params:
        **windowing(),
        key=lambda w: w.key,
        batch_tokens=config["knn"]["batch_tokens"],
    script:
        "../scripts/knn_search.py"


rule knn_shard_search:
    input:
        unpack(lambda w: shard_search_inputs(w.model, w.step, w.key, w.shard)),
        **search_queries("{model}", "{step}", "{key}"),
        manifest=datastore("{model}", "{step}", "{key}", "{shard}")["manifest"],
    output:
        directory(shard_answer_dir("{model}", "{step}", "{key}", "{shard}")),
    log:
        f"{LOGS}/knn/{POINT}/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/knn/{POINT}/shard-{{shard}}.tsv"
    priority: 20
    conda:
        ENV
    # faiss-cpu searches here: a CPU node's job ("index" resources), no GPU held
    threads: threads("index")
    resources:
        **res("index", "knn_shard_search"),
    params:
        kind=index_kind(),
        k=config["knn"]["k"],
        nprobe=config["knn"]["nprobe"],
        rerank=config["knn"]["rerank"],
        fidelity_queries=config["knn"]["fidelity_queries"],
    script:
        "../scripts/knn_search.py"


rule knn_merge:
    input:
        lm_valid=lm_pass_file("{model}", "{step}", "{key}", "valid"),
        lm_test=lm_pass_file("{model}", "{step}", "{key}", "test"),
        answers=lambda w: [
            shard_answer_dir(w.model, w.step, w.key, s) for s in shards()
        ],
    output:
        valid=knn_file("{model}", "{step}", "{key}", "valid"),
        test=knn_file("{model}", "{step}", "{key}", "test"),
        test_ids=knn_ids_file("{model}", "{step}", "{key}"),
        exact_sample=knn_exact_sample("{model}", "{step}", "{key}"),
    log:
        f"{LOGS}/knn/{POINT}/merge.log",
    benchmark:
        f"{BENCH}/knn/{POINT}/merge.tsv"
    priority: 20
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "knn_merge"),
    params:
        k=config["knn"]["k"],
    script:
        "../scripts/knn_search.py"


rule knn_merge_first_shards:
    input:
        lm_valid=lm_pass_file("{model}", "{step}", "{key}", "valid"),
        lm_test=lm_pass_file("{model}", "{step}", "{key}", "test"),
        answers=lambda w: [
            shard_answer_dir(w.model, w.step, w.key, s) for s in shards(int(w.size))
        ],
    output:
        valid=first_shards_file("{model}", "{step}", "{key}", "{size}", "valid"),
        test=first_shards_file("{model}", "{step}", "{key}", "{size}", "test"),
    log:
        f"{LOGS}/knn/{POINT}/first-{{size}}-shards.log",
    benchmark:
        f"{BENCH}/knn/{POINT}/first-{{size}}-shards.tsv"
    wildcard_constraints:
        size=r"\d+",
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "knn_merge_first_shards"),
    params:
        k=config["knn"]["k"],
    script:
        "../scripts/knn_search.py"
