# Figure 1 (paper section 4): children log-likelihood on Macondo v1 at every
# checkpoint, with and without the last MLP, and the kNN-LM over v1.


rule children_loglik:
    input:
        unpack(children_inputs),
        prompts=rules.macondo.output.prompts,
        examples=tokens("prompts_v1"),
    output:
        f"{R}/children/{{model}}.csv",
    log:
        f"{LOGS}/children/{{model}}.log",
    benchmark:
        f"{BENCH}/children/{{model}}.tsv"
    wildcard_constraints:
        model=r"(memorization-(full|no_last_mlp)|overspec)-seed-?\d+",
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    params:
        steps=lambda w: sorted(run_of(w.model)[0]),
        variant=lambda w: run_of(w.model)[2],
        seed=lambda w: run_of(w.model)[3],
        # only runs with a kNN-LM read (lambda, T): LM-only runs ignore them
        lam=lambda w: config["knn"]["lambda"] if run_of(w.model)[4] else None,
        temperature=lambda w: (
            config["knn"]["temperature"] if run_of(w.model)[4] else None
        ),
    script:
        "../scripts/children.py"


rule figure1:
    input:
        expand(
            f"{R}/children/memorization-{{variant}}-seed{{seed}}.csv",
            variant=config["memorization"]["variants"],
            seed=config["memorization"]["seeds"],
        ),
    output:
        png=report(
            f"{R}/figures/figure1.png",
            caption="../report/figure1.rst",
            category="Figure 1",
        ),
        pdf=f"{R}/figures/figure1.pdf",
        csv=report(
            f"{R}/figures/figure1.csv",
            caption="../report/figure1.rst",
            category="Figure 1",
        ),
        rows=f"{R}/figures/figure1_children.csv",
    log:
        f"{LOGS}/figures/figure1.log",
    benchmark:
        f"{BENCH}/figures/figure1.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **res("small"),
    params:
        figure="figure1",
    script:
        "../scripts/children_figure.py"
