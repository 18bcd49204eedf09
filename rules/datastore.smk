# Datastore stage: kNN keys and next-token values of the corpus training split
# under a corpus LM (sliding windows: each position once), one job a shard (knn.shards,
# knnlm_limits.shards): a contiguous range of whole batches of windows, with global ids.
# Macondo's small datastores are built inside their run's evaluation job (children.smk).


rule datastore:
    input:
        model=model_dir("{model}", "{step}"),
        examples=tokens("corpus_train"),
    output:
        **datastore("{model}", "{step}", "{key}", "{shard}"),
    log:
        f"{LOGS}/datastore/{POINT}/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/datastore/{POINT}/shard-{{shard}}.tsv"
    priority: 20
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed", "datastore"),
    params:
        **windowing(),
        key=lambda w: w.key,
        batch_tokens=config["knn"]["batch_tokens"],
        shard=lambda w: int(w.shard),
        shards=config["knn"]["shards"],
    script:
        "../scripts/datastore.py"
