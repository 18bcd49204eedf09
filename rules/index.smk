# Index stage: a FAISS index over a datastore's keys.


rule index:
    input:
        key_file=datastore("{model}", "{step}", "{data}")["key_file"],
    output:
        index_file("{model}", "{step}", "{data}"),
    log:
        f"{LOGS}/index/{{model}}/step-{{step}}/{{data}}.log",
    benchmark:
        f"{BENCH}/index/{{model}}/step-{{step}}/{{data}}.tsv"
    conda:
        ENV
    threads: threads("index")
    resources:
        **res("index"),
    params:
        factory=config["knn"]["index"],
        train_sample=config["knn"]["index_train_sample"],
    script:
        "../scripts/index.py"
