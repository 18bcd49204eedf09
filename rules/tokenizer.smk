# Tokenizer stage: one tokenizer for the whole workflow.


rule tokenizer:
    input:
        train=f"{R}/data/corpus/train.txt",
    output:
        directory(f"{R}/data/tokenizer"),
    log:
        f"{LOGS}/tokenizer.log",
    benchmark:
        f"{BENCH}/tokenizer.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "tokenizer"),
    params:
        pretrained=config["tokenizer"]["pretrained"],
        vocab_size=config["tokenizer"]["vocab_size"],
    script:
        "../scripts/tokenizer.py"
