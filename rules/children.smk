# Children log-likelihood of one Macondo training run (Figure 1's or Figure 2's) at
# every checkpoint: the LM's, and for runs with a kNN-LM the neighbours of each prompt
# in a datastore of the run's sentences under that checkpoint (small: built and
# searched in memory). lambda and T are applied by the figure. The run is a model
# name under models/: memorization/<shape>/<variant>/seed-<seed> or
# overspecification/seed-<seed> (macondo_runs in common.smk).


rule children_eval:
    input:
        checkpoints=lambda w: run_checkpoints(f"{w.experiment}/{w.run}", w.experiment),
        prompts=tokens("prompts_v1"),
        sentences=lambda w: tokens(macondo_run(w)["sentences"]),
    output:
        children_results("{experiment}/{run}"),
    log:
        f"{LOGS}/children/{{experiment}}/{{run}}.log",
    benchmark:
        f"{BENCH}/children/{{experiment}}/{{run}}.tsv"
    wildcard_constraints:
        experiment="memorization|overspecification",
        run=f"[{NAME_CHARS}/]+",
    # Figure 2's runs wait for the corpus LM, as its training runs do (common.smk)
    priority: lambda w: 10 if w.experiment == "overspecification" else 0
    group:
        "{experiment}_run"
    conda:
        ENV
    threads: threads("embed")
    resources:
        **res("embed", "children_eval", facts=macondo_run),
    params:
        steps=lambda w: sorted(config[w.experiment]["train"]["checkpoints"]),
        # LM-only runs read no kNN setting (nor the sentences); Figure 2's also their memory's
        knn=macondo_search,
    script:
        "../scripts/children.py"
