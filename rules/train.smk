# Training stage: one lean resumable loop (knnlm_limits.train) behind four
# experiments. Checkpoints of a run are its outputs, one folder per step.


rule import_pretrained:
    output:
        directory(f"{R}/models/{{model}}/step-0"),
    log:
        f"{LOGS}/import/{{model}}.log",
    benchmark:
        f"{BENCH}/import/{{model}}.tsv"
    wildcard_constraints:
        model=r"hub-[A-Za-z0-9_.=+-]+",
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    params:
        name=lambda w: pretrained_source(w.model)[0],
        config_key=lambda w: pretrained_source(w.model)[1],
    script:
        "../scripts/import_pretrained.py"


if not config["corpus_lm"]["pretrained"]:

    rule train_corpus_lm:
        input:
            examples=tokens("corpus_train"),
            tokenizer=f"{R}/data/tokenizer",
        output:
            ckpt_dirs("corpus_lm", "corpus_lm"),
        log:
            f"{LOGS}/train/corpus_lm.log",
        benchmark:
            f"{BENCH}/train/corpus_lm.tsv"
        conda:
            ENV
        threads: threads("train")
        resources:
            **res("train"),
        params:
            train=train_params("corpus_lm"),
            shape=canon(config["corpus_lm"]["shape"]),
            seed=config["corpus_lm"]["seed"],
            n_positions=config["corpus"]["block_size"],
            drop_last_mlp=False,
            work_dir=f"{R}/models/corpus_lm/.work",
        script:
            "../scripts/train.py"


rule train_memorization:
    input:
        examples=tokens("macondo_v1"),
        tokenizer=f"{R}/data/tokenizer",
    output:
        ckpt_dirs(memorization_model("{variant}", "{seed}"), "memorization"),
    log:
        f"{LOGS}/train/memorization-{{variant}}-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train/memorization-{{variant}}-seed{{seed}}.tsv"
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train"),
    params:
        train=train_params("memorization"),
        shape=canon(config["memorization"]["shape"]),
        seed=lambda w: int(w.seed),
        n_positions=64,
        drop_last_mlp=lambda w: w.variant == "no_last_mlp",
        work_dir=lambda w: f"{R}/models/{memorization_model(w.variant, w.seed)}/.work",
    script:
        "../scripts/train.py"


rule train_overspecification:
    input:
        examples=tokens("macondo_v2"),
        init=model_dir(*base_model(config["overspecification"]["base_model"])),
    output:
        ckpt_dirs(overspec_model("{seed}"), "overspecification"),
    log:
        f"{LOGS}/train/overspec-seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train/overspec-seed{{seed}}.tsv"
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train"),
    params:
        train=train_params("overspecification"),
        seed=lambda w: int(w.seed),
        work_dir=lambda w: f"{R}/models/{overspec_model(w.seed)}/.work",
    script:
        "../scripts/train.py"


rule train_scale:
    input:
        examples=tokens("chat_v2_train"),
        init=model_dir(*base_model(config["scale"]["model"])),
    output:
        ckpt_dirs("chat", "scale"),
    log:
        f"{LOGS}/train/chat.log",
    benchmark:
        f"{BENCH}/train/chat.tsv"
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train"),
    params:
        train=train_params("scale"),
        seed=config["scale"]["seed"],
        work_dir=f"{R}/models/chat/.work",
    script:
        "../scripts/train.py"
