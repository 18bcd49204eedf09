# Parametric-memory stage (Chiang et al., NAACL 2024; MLP Memory, Wei et al. 2025): at every
# corpus kNN-LM point an MLP trained on the datastore in place of retrieval, weighed against
# the kNN-LM in perplexity, bytes and time, with its two controls: the LM itself trained
# further for the memory's compute, and the same memory trained on values alone (alpha 0).
# The storage-perplexity frontier adds product-quantised datastores and memories of other
# sizes; each code size and memory size is a wildcard.


rule memory_target_queries:
    input:
        key_files=lambda w: datastore_files(w.model, w.step, w.key, "key_file"),
        position_files=lambda w: datastore_files(
            w.model, w.step, w.key, "position_file"
        ),
    output:
        directory(kl_queries_dir("{model}", "{step}", "{key}")),
    log:
        f"{LOGS}/memory/{POINT}/kl_queries.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/kl_queries.tsv"
    # the memory's chain (targets -> memory -> table) ends as late as Table 1's: its priority
    priority: 20
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "memory_target_queries"),
    params:
        n=config["memory"]["kl_positions"],
        seed=config["memory"]["seed"],
    script:
        "../scripts/memory.py"


# each sampled entry's neighbours among one shard's entries (k + 1: the entry itself is dropped
# at the merge, in its own shard)
rule memory_target_shard:
    input:
        unpack(lambda w: shard_search_inputs(w.model, w.step, w.key, w.shard)),
        manifest=datastore("{model}", "{step}", "{key}", "{shard}")["manifest"],
        queries=kl_queries_dir("{model}", "{step}", "{key}"),
    output:
        directory(kl_answer_dir("{model}", "{step}", "{key}", "{shard}")),
    log:
        f"{LOGS}/memory/{POINT}/kl_shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/kl_shard-{{shard}}.tsv"
    priority: 20
    conda:
        ENV
    # the search's job: faiss-cpu on a CPU node
    threads: threads("index")
    resources:
        **res("index", "memory_target_shard"),
    params:
        k=config["knn"]["k"],
        nprobe=config["knn"]["nprobe"],
        rerank=config["knn"]["rerank"],
    script:
        "../scripts/memory.py"


rule memory_targets:
    input:
        queries=kl_queries_dir("{model}", "{step}", "{key}"),
        answers=lambda w: [kl_answer_dir(w.model, w.step, w.key, s) for s in shards()],
    output:
        directory(kl_targets_dir("{model}", "{step}", "{key}")),
    log:
        f"{LOGS}/memory/{POINT}/kl_targets.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/kl_targets.tsv"
    priority: 20
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "memory_targets"),
    params:
        k=config["knn"]["k"],
        temperature=config["knn"]["temperature"],
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
        manifests=lambda w: datastore_files(
            w.model, w.step, config["knn"]["keys"][0], "manifest"
        ),
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


# each code size's product-quantised datastore: trained once on a sample across the shards,
# each shard's codes added and searched by a job of its own, the answers merged
rule frontier_trained:
    input:
        key_files=lambda w: datastore_files(w.model, w.step, w.key, "key_file"),
    output:
        directory(frontier_trained_dir("{model}", "{step}", "{key}", "{code}")),
    log:
        f"{LOGS}/memory/{POINT}/pq{{code}}/trained.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/pq{{code}}/trained.tsv"
    priority: 10
    conda:
        ENV
    threads: threads("index")
    resources:
        **res("index", "frontier_trained"),
    params:
        factory=lambda w: config["memory"]["frontier_index"].format(code=w.code),
        train_sample=config["memory"]["frontier_train_sample"],
    script:
        "../scripts/memory.py"


rule frontier_shard:
    input:
        **datastore("{model}", "{step}", "{key}", "{shard}"),
        **search_queries("{model}", "{step}", "{key}"),
        trained=frontier_trained_dir("{model}", "{step}", "{key}", "{code}"),
    output:
        index=directory(
            frontier_shard_dir(
                "{model}", "{step}", "{key}", "{code}", "{shard}", "index"
            )
        ),
        answer=directory(
            frontier_shard_dir(
                "{model}", "{step}", "{key}", "{code}", "{shard}", "answer"
            )
        ),
    log:
        f"{LOGS}/memory/{POINT}/pq{{code}}/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/pq{{code}}/shard-{{shard}}.tsv"
    priority: 10
    conda:
        ENV
    threads: threads("index")
    resources:
        **res("index", "frontier_shard"),
    params:
        k=config["knn"]["k"],
        nprobe=config["knn"]["nprobe"],
    script:
        "../scripts/memory.py"


rule frontier_pq:
    input:
        lm_valid=lm_pass_file("{model}", "{step}", "{key}", "valid"),
        lm_test=lm_pass_file("{model}", "{step}", "{key}", "test"),
        answers=lambda w: [
            frontier_shard_dir(w.model, w.step, w.key, w.code, s, "answer")
            for s in shards()
        ],
    output:
        valid=frontier_file("{model}", "{step}", "{key}", "{code}", "valid"),
        test=frontier_file("{model}", "{step}", "{key}", "{code}", "test"),
    log:
        f"{LOGS}/memory/{POINT}/pq{{code}}.log",
    benchmark:
        f"{BENCH}/memory/{POINT}/pq{{code}}.tsv"
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        **res("small", "frontier_pq"),
    params:
        k=config["knn"]["k"],
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
        index_kind=index_kind(),
        frontier_kinds=[
            config["memory"]["frontier_index"].format(code=c)
            for c in config["memory"]["frontier_pq"]
        ],
        lambdas=config["memory"]["lambdas"],
        grid=canon(config["table1"]["grid"]),
        lam=config["knn"]["lambda"],
        temperature=config["knn"]["temperature"],
        scale=lambda w: point_scale(w.model, w.step, w.key),
        bootstrap=canon(config["findings"]),
        title=lambda w: f"{w.model} step {w.step}, key {w.key}",
    script:
        "../scripts/memory.py"
