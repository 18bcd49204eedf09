# kNN-LM stage: LM log-probs and each scored position's k neighbours. The
# interpolation (lambda, T) is applied downstream, so changing it reruns no search.


rule knn_search:
    input:
        model=f"{R}/models/{{model}}/step-{{step}}",
        index=index_file("{model}", "{step}", "{data}"),
        value_file=datastore("{model}", "{step}", "{data}")["value_file"],
        examples=tokens("{evalset}"),
    output:
        knn_file("{model}", "{step}", "{data}", "{evalset}"),
    log:
        f"{LOGS}/knn/{{model}}/step-{{step}}/{{data}}/{{evalset}}.log",
    benchmark:
        f"{BENCH}/knn/{{model}}/step-{{step}}/{{data}}/{{evalset}}.tsv"
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed"),
    params:
        k=config["knn"]["k"],
        key=config["knn"]["key"],
        nprobe=config["knn"]["nprobe"],
        batch_tokens=config["knn"]["batch_tokens"],
    script:
        "../scripts/knn_search.py"
