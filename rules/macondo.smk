# Macondo stage: synthetic villages v1/v2 (paper sections 4-5), then tokens.

MACONDO = f"{R}/data/macondo"


rule macondo:
    input:
        tokenizer=f"{R}/data/tokenizer",
    output:
        villagers=f"{MACONDO}/villagers.csv",
        facts=f"{MACONDO}/facts.csv",
        prompts=f"{MACONDO}/prompts_v1.csv",
        v1=f"{MACONDO}/v1_train.txt",
        v2=f"{MACONDO}/v2_train.txt",
        chat=f"{MACONDO}/chat_v2_train.txt",
    log:
        f"{LOGS}/macondo.log",
    benchmark:
        f"{BENCH}/macondo.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    params:
        settings=canon(config["macondo"]),
    script:
        "../scripts/macondo.py"


rule macondo_tokens:
    input:
        tokenizer=f"{R}/data/tokenizer",
        v1=rules.macondo.output.v1,
        v2=rules.macondo.output.v2,
        prompts=rules.macondo.output.prompts,
    output:
        v1=tokens("macondo_v1"),
        v2=tokens("macondo_v2"),
        prompts=tokens("prompts_v1"),
    log:
        f"{LOGS}/macondo_tokens.log",
    benchmark:
        f"{BENCH}/macondo_tokens.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    script:
        "../scripts/macondo_tokens.py"


rule chat_tokens:
    input:
        tokenizer=scale_tokenizer(),
        chat=rules.macondo.output.chat,
        prompts=rules.macondo.output.prompts,
    output:
        train=tokens("chat_v2_train"),
        prompts=tokens("chat_prompts_v1"),
    log:
        f"{LOGS}/chat_tokens.log",
    benchmark:
        f"{BENCH}/chat_tokens.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    script:
        "../scripts/chat_tokens.py"
