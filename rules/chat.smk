# Figure 3 (paper section 5.4): a chat/instruct model (any architecture, its own
# tokenizer and chat template) fine-tuned on the v2 chat turns, scored on the v1
# chat prompts; likelihood of the children against 1/n. Scoring and plotting are
# one job: the scoring is a forward pass over a few hundred prompts.


rule figure3:
    input:
        model=model_dir("chat", last(config["chat"]["train"]["checkpoints"])),
        examples=tokens("chat_prompts_v1"),
        prompts=rules.macondo.output.prompts,
    output:
        **figure_outputs(f"{R}/figure3", "figure3"),
        rows=f"{R}/figure3/children.csv",
    log:
        f"{LOGS}/figure3.log",
    benchmark:
        f"{BENCH}/figure3.tsv"
    priority: 10
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed", "figure3"),
    params:
        title=f"({config['chat']['model']})",
    script:
        "../scripts/figure3.py"
