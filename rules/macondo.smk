# Macondo stage: synthetic villages v1/v2 (paper sections 4-5), as readable files
# and as token examples; and the chat turns of Figure 3 in the chat model's format.

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
        chat=f"{MACONDO}/chat_v2_train.csv",
        v1_tokens=tokens("macondo_v1"),
        v2_tokens=tokens("macondo_v2"),
        prompt_tokens=tokens("prompts_v1"),
    log:
        f"{LOGS}/macondo.log",
    benchmark:
        f"{BENCH}/macondo.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "macondo"),
    params:
        settings=canon(config["macondo"]),
    script:
        "../scripts/macondo.py"


rule chat_tokens:
    input:
        tokenizer=chat_tokenizer(),
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
        **res("small", "chat_tokens"),
    script:
        "../scripts/chat_tokens.py"
