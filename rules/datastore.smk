# Datastore stage: kNN keys and next-token values of the corpus training split
# under a corpus LM (sliding windows: each position once). Macondo's small
# datastores are built inside their run's evaluation job (memorization.smk).


rule datastore:
    input:
        model=model_dir("{model}", "{step}"),
        examples=tokens("corpus_train"),
    output:
        **datastore("{model}", "{step}"),
        position_file=datastore_positions("{model}", "{step}"),
    log:
        f"{LOGS}/datastore/{{model}}/step-{{step}}.log",
    benchmark:
        f"{BENCH}/datastore/{{model}}/step-{{step}}.tsv"
    priority: 20
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed", "datastore"),
    params:
        **windowing(),
        key=config["knn"]["key"],
        batch_tokens=config["knn"]["batch_tokens"],
    script:
        "../scripts/datastore.py"
