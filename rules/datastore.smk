# Datastore stage: kNN keys and next-token values of the corpus training split
# under a corpus LM (sliding windows: each position once). Macondo's small
# datastores are built inside their run's evaluation job (children.smk).


rule datastore:
    input:
        model=model_dir("{model}", "{step}"),
        examples=tokens("corpus_train"),
    output:
        **datastore("{model}", "{step}", "{key}"),
        position_file=datastore_positions("{model}", "{step}", "{key}"),
    log:
        f"{LOGS}/datastore/{POINT}.log",
    benchmark:
        f"{BENCH}/datastore/{POINT}.tsv"
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
    script:
        "../scripts/datastore.py"
