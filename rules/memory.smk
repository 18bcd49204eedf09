# Parametric-memory stage (Chiang et al., NAACL 2024; MLP Memory, Wei et al. 2025): at every
# corpus kNN-LM point an MLP trained on the datastore in place of retrieval, weighed against
# the kNN-LM in perplexity, bytes and time, with its two controls: the LM itself trained
# further for the memory's compute, and the same memory trained on values alone (alpha 0).
# The storage-perplexity frontier adds product-quantised datastores and memories of other
# sizes; each code size and memory size is a wildcard.


rule memory_targets:
    input:
        **datastore("{model}", "{step}", "{key}"),
        position_file=datastore_positions("{model}", "{step}", "{key}"),
        index=index_dir("{model}", "{step}", "{key}"),
    output:
        directory(kl_targets_dir("{model}", "{step}", "{key}")),
    log:
        f"{LOGS}/memory/{POINT}/kl_targets.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/kl_targets.tsv"
    # the memory's chain (targets -> memory -> table) ends as late as Table 1's: its priority
    priority: 20
    conda:
        ENV
    # the search's job: faiss-cpu on a CPU node
    threads: threads("index")
    resources:
        **res("index", "memory_targets"),
    params:
        n=config["memory"]["kl_positions"],
        seed=config["memory"]["seed"],
        k=config["knn"]["k"],
        temperature=config["knn"]["temperature"],
        nprobe=config["knn"]["nprobe"],
        rerank=config["knn"]["rerank"],
    script:
        "../scripts/memory.py"


# the wildcards of a memory: its kNN-LM point, its size and its objective
MEMORY = ("{model}", "{step}", "{key}", "{expansion}", "{objective}")
MEMORY_NAME = memory_name("{expansion}", "{objective}")


rule train_memory:
    input:
        unpack(memory_inputs),
    output:
        model=directory(memory_file(*MEMORY, "model")),
        logprobs=memory_file(*MEMORY, "logprobs.npz"),
        footprint=memory_file(*MEMORY, "footprint.csv"),
        costs=memory_file(*MEMORY, "query_costs.csv"),
    log:
        f"{LOGS}/memory/{POINT}/{MEMORY_NAME}.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/{MEMORY_NAME}.tsv"
    priority: lambda w: 20 if memory_name(w.expansion, w.objective) == main_memory() else 10
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train", "train_memory"),
    params:
        shape=lambda w: memory_shape(w.expansion),
        alpha=lambda w: memory_alpha(w.objective),
        train=memory_train_settings(),
        search={k: config["knn"][k] for k in ("k", "nprobe", "rerank")},
        timing_queries=config["memory"]["timing_queries"],
        work_dir=lambda w: memory_file(
            w.model, w.step, w.key, w.expansion, w.objective, ".work"
        ),
    script:
        "../scripts/memory.py"


rule more_training:
    input:
        model=model_dir("{model}", "{step}"),
        examples=tokens("corpus_train"),
        # the datastore's size sets the memory's compute (every key gives the same entries)
        value_file=lambda w: datastore(w.model, w.step, config["knn"]["keys"][0])[
            "value_file"
        ],
        valid=tokens("corpus_valid"),
        test=tokens("corpus_test"),
    output:
        model=directory(more_training_model("{model}", "{step}")),
        logprobs=more_training_logprobs("{model}", "{step}"),
    log:
        f"{LOGS}/memory/{{model}}/step-{{step}}/more_training.log",
    benchmark:
        f"{BENCH}/memory/{{model}}/step-{{step}}/more_training.tsv"
    wildcard_constraints:
        model=f"corpus_lm/{NAME}",
    priority: 10
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train", "more_training"),
    params:
        **memory_budget(),
        step=lambda w: int(w.step),
        train=train_params("corpus_lm"),
        seed=config["corpus_lm"]["seed"],
        windowing=windowing(),
        batch_tokens=config["knn"]["batch_tokens"],
        work_dir=lambda w: f"{R}/models/{w.model}/more_training/.work-from-step-{w.step}",
    script:
        "../scripts/memory.py"


rule frontier_pq:
    input:
        **datastore("{model}", "{step}", "{key}"),
        **search_queries("{model}", "{step}", "{key}"),
        **search_results("{model}", "{step}", "{key}"),
    output:
        index=directory(frontier_index_dir("{model}", "{step}", "{key}", "{code}")),
        valid=frontier_file("{model}", "{step}", "{key}", "{code}", "valid"),
        test=frontier_file("{model}", "{step}", "{key}", "{code}", "test"),
    log:
        f"{LOGS}/memory/{POINT}/pq{{code}}.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/pq{{code}}.tsv"
    priority: 10
    conda:
        ENV
    threads: threads("index")
    resources:
        **res("index", "frontier_pq"),
    params:
        factory=lambda w: config["memory"]["frontier_index"].format(code=w.code),
        train_sample=config["memory"]["frontier_train_sample"],
        k=config["knn"]["k"],
        nprobe=config["knn"]["nprobe"],
    script:
        "../scripts/memory.py"


rule memory_table:
    input:
        unpack(memory_table_inputs),
    output:
        **figure_outputs(T1, "frontier"),
        table=report(
            f"{T1}/memory.csv", caption="../report/memory.rst", category="Memory"
        ),
        md=f"{T1}/memory.md",
        tokens=f"{T1}/memory_tokens.csv",
        grid=f"{T1}/memory_grid.csv",
        findings=f"{T1}/memory_findings.csv",
        costs=f"{T1}/query_costs.csv",
    log:
        f"{LOGS}/table1/{POINT}/memory.log",
    benchmark:
        f"{BENCH}/table1/{POINT}/memory.tsv"
    priority: 20
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "memory_table"),
    params:
        memories=[
            {"name": memory_name(e, o), "objective": o} for e, o in memory_variants()
        ],
        main=main_memory(),
        control=memory_control(),
        codes=config["memory"]["frontier_pq"],
        head=config["memory"]["head"],
        rerank=config["knn"]["rerank"],  # whether the search reads the keys (their bytes count)
        lambdas=config["memory"]["lambdas"],
        grid=canon(config["table1"]["grid"]),
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        scale=lambda w: point_scale(w.model, w.step, w.key),
        bootstrap=canon(config["findings"]),
        title=lambda w: f"{w.model} step {w.step}, key {w.key}",
    script:
        "../scripts/memory.py"
