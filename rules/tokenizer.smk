# Tokenizer stage: one tokenizer for the whole workflow.


rule tokenizer:
    input:
        train=f"{R}/data/corpus/train.txt",
    output:
        directory(f"{R}/data/tokenizer"),
    params:
        pretrained=config["tokenizer"]["pretrained"],
        vocab_size=config["tokenizer"]["vocab_size"],
    log:
        f"{LOGS}/tokenizer.log",
    benchmark:
        f"{BENCH}/tokenizer.tsv"
    threads: 1
    resources:
        **res("small"),
    conda:
        ENV
    script:
        "../scripts/tokenizer.py"
