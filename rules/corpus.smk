# Corpus stage: WikiText splits (hub, local files or synthetic text) as text, then
# as token streams. Blocks (training) and sliding windows (evaluation, datastore)
# are cut from the streams by the jobs that read them.


rule corpus:
    output:
        train=f"{R}/data/corpus/train.txt",
        valid=f"{R}/data/corpus/valid.txt",
        test=f"{R}/data/corpus/test.txt",
    log:
        f"{LOGS}/corpus.log",
    benchmark:
        f"{BENCH}/corpus.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "corpus"),
    params:
        hub_id=config["corpus"]["hub_id"],
        hub_config=config["corpus"]["hub_config"],
        local_files=canon(config["corpus"]["local_files"]),
        synthetic=canon(config["corpus"]["synthetic"]),
        base_dir=workflow.basedir,
    script:
        "../scripts/corpus.py"


rule corpus_tokens:
    input:
        text=f"{R}/data/corpus/{{split}}.txt",
        tokenizer=f"{R}/data/tokenizer",
    output:
        tokens("corpus_{split}"),
    log:
        f"{LOGS}/corpus_tokens/{{split}}.log",
    benchmark:
        f"{BENCH}/corpus_tokens/{{split}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "corpus_tokens"),
    params:
        block_size=config["corpus"]["block_size"],
        max_tokens=lambda w: (
            config["corpus"]["max_train_tokens"]
            if w.split == "train"
            else config["corpus"]["eval_tokens"][w.split]
        ),
    script:
        "../scripts/corpus_tokens.py"
