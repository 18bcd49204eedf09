# Index stage, for a datastore searched through a FAISS index (knn.approximate_index above
# knn.exact_max_keys entries; chosen while planning): one job trains the index once, with
# no keys, on a seeded sample drawn across every shard; one job a shard fills a copy of it
# with that shard's keys. Every shard shares the trained quantizer and codebooks, so its
# neighbours merge into the unsharded index's. Exact search needs no index.


rule index_trained:
    input:
        key_files=lambda w: datastore_files(w.model, w.step, w.key, "key_file"),
    output:
        directory(trained_index_dir("{model}", "{step}", "{key}")),
    log:
        f"{LOGS}/index/{POINT}/trained.log",
    benchmark:
        f"{BENCH}/index/{POINT}/trained.tsv"
    priority: 20
    conda:
        ENV
    threads: threads("index")
    resources:
        **res("index", "index_trained"),
    params:
        factory=index_kind(),
        train_sample=config["knn"]["index_train_sample"],
    script:
        "../scripts/index.py"


rule index_shard:
    input:
        trained=trained_index_dir("{model}", "{step}", "{key}"),
        key_file=datastore("{model}", "{step}", "{key}", "{shard}")["key_file"],
    output:
        directory(shard_index_dir("{model}", "{step}", "{key}", "{shard}")),
    log:
        f"{LOGS}/index/{POINT}/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/index/{POINT}/shard-{{shard}}.tsv"
    priority: 20
    conda:
        ENV
    threads: threads("index")
    resources:
        **res("index", "index_shard"),
    script:
        "../scripts/index.py"
