# Figure 3 (paper section 5.4): a chat/instruct model fine-tuned on v2 chat
# turns, tested on v1 chat prompts; likelihood of the children against 1/n.


rule chat_loglik:
    input:
        model=model_dir("chat", last(config["scale"]["train"]["checkpoints"])),
        examples=tokens("chat_prompts_v1"),
        prompts=rules.macondo.output.prompts,
    output:
        f"{R}/children/chat.csv",
    log:
        f"{LOGS}/children/chat.log",
    benchmark:
        f"{BENCH}/children/chat.tsv"
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed"),
    script:
        "../scripts/chat_loglik.py"


rule figure3:
    input:
        rules.chat_loglik.output,
    output:
        png=report(
            f"{R}/figures/figure3.png",
            caption="../report/figure3.rst",
            category="Figure 3",
        ),
        pdf=f"{R}/figures/figure3.pdf",
        csv=report(
            f"{R}/figures/figure3.csv",
            caption="../report/figure3.rst",
            category="Figure 3",
        ),
        rows=f"{R}/figures/figure3_children.csv",
    log:
        f"{LOGS}/figures/figure3.log",
    benchmark:
        f"{BENCH}/figures/figure3.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    params:
        figure="figure3",
    script:
        "../scripts/children_figure.py"
