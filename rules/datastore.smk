# Datastore stage: kNN keys and next-token values of a token set under a checkpoint.


rule datastore:
    input:
        model=f"{R}/models/{{model}}/step-{{step}}",
        examples=tokens("{data}"),
    output:
        **datastore("{model}", "{step}", "{data}"),
    log:
        f"{LOGS}/datastore/{{model}}/step-{{step}}/{{data}}.log",
    benchmark:
        f"{BENCH}/datastore/{{model}}/step-{{step}}/{{data}}.tsv"
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed"),
    params:
        key=config["knn"]["key"],
        batch_tokens=config["knn"]["batch_tokens"],
    script:
        "../scripts/datastore.py"
