# Index stage: a FAISS index over a datastore's keys.


rule index:
    input:
        key_file=datastore("{model}", "{step}", "{data}")["key_file"],
    output:
        index_file("{model}", "{step}", "{data}"),
    params:
        factory=config["knn"]["index"],
        train_sample=config["knn"]["index_train_sample"],
    log:
        f"{LOGS}/index/{{model}}/step-{{step}}/{{data}}.log",
    benchmark:
        f"{BENCH}/index/{{model}}/step-{{step}}/{{data}}.tsv"
    threads: threads("index")
    resources:
        **res("index"),
    conda:
        ENV
    script:
        "../scripts/index.py"
