# Figure 2 (paper section 5): fine-tune on Macondo v2, test on v1 prompts; the
# kNN-LM's datastore holds the v2 sentences under each checkpoint.


rule figure2:
    input:
        expand(
            f"{R}/children/{{model}}.csv",
            model=[overspec_model(s) for s in config["overspecification"]["seeds"]],
        ),
    output:
        png=report(
            f"{R}/figures/figure2.png",
            caption="../report/figure2.rst",
            category="Figure 2",
        ),
        pdf=f"{R}/figures/figure2.pdf",
        csv=report(
            f"{R}/figures/figure2.csv",
            caption="../report/figure2.rst",
            category="Figure 2",
        ),
        rows=f"{R}/figures/figure2_children.csv",
    log:
        f"{LOGS}/figures/figure2.log",
    benchmark:
        f"{BENCH}/figures/figure2.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    params:
        figure="figure2",
    script:
        "../scripts/children_figure.py"
