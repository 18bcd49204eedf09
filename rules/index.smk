# Index stage: how a corpus datastore is searched, chosen by its size: exact
# below knn.exact_max_keys (no index for `exact`), else the approximate FAISS factory.


rule index:
    input:
        key_file=datastore("{model}", "{step}", "{key}")["key_file"],
    output:
        directory(index_dir("{model}", "{step}", "{key}")),
    log:
        f"{LOGS}/index/{POINT}.log",
    benchmark:
        f"{BENCH}/index/{POINT}.tsv"
    priority: 20
    conda:
        ENV
    threads: threads("index")
    resources:
        **res("index", "index"),
    params:
        settings=index_settings(),
    script:
        "../scripts/index.py"
