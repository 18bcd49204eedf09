# Table 1 (paper section 3): LM vs kNN-LM perplexity on the corpus, and the
# projection of p_knnlm onto f and f∘g (softmax bottleneck vs MLP hurdle).


rule knnlm_grid:
    input:
        corpus_knn("corpus_valid"),
    output:
        csv=report(
            f"{R}/table1/grid.csv", caption="../report/grid.rst", category="Table 1"
        ),
        png=report(
            f"{R}/table1/grid.png", caption="../report/grid.rst", category="Table 1"
        ),
    log:
        f"{LOGS}/table1/grid.log",
    benchmark:
        f"{BENCH}/table1/grid.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    params:
        lambdas=config["table1"]["grid"]["lambda"],
        temperatures=config["table1"]["grid"]["temperature"],
    script:
        "../scripts/knnlm_grid.py"


rule projection:
    input:
        model=model_dir(*corpus_lm()),
        examples=tokens("corpus_test"),
        found=corpus_knn("corpus_test"),
        grid=rules.knnlm_grid.output.csv,
    output:
        tokens=f"{R}/table1/projection_tokens.csv",
        traces=f"{R}/table1/projection_traces.csv",
        png=report(
            f"{R}/table1/projection_traces.png",
            caption="../report/projection.rst",
            category="Table 1",
        ),
    log:
        f"{LOGS}/table1/projection.log",
    benchmark:
        f"{BENCH}/table1/projection.tsv"
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed"),
    params:
        settings=canon(config["table1"]["projection"]),
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
    script:
        "../scripts/projection.py"


rule table1:
    input:
        found=corpus_knn("corpus_test"),
        grid=rules.knnlm_grid.output.csv,
        projection=rules.projection.output.tokens,
        key_file=datastore(*corpus_lm(), "corpus_train")["key_file"],
    output:
        csv=report(
            f"{R}/table1/table1.csv",
            caption="../report/table1.rst",
            category="Table 1",
        ),
        md=f"{R}/table1/table1.md",
    log:
        f"{LOGS}/table1/table1.log",
    benchmark:
        f"{BENCH}/table1/table1.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    params:
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        k=config["knn"]["k"],
        setting=config["table1"]["projection"]["setting"],
    script:
        "../scripts/table1.py"
