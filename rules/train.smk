# Training stage: one lean resumable loop (knnlm_limits.train) behind four
# experiments. Checkpoints are outputs, one folder per step. The corpus LM and the chat
# model are one job per checkpoint, each continuing the one before from its weights and
# optimizer state: appending a checkpoint plans only its steps, and earlier checkpoints and
# everything computed from them stand. A Macondo run (Figures 1 and 2: many checkpoints, a
# few minutes in all) is one job, which trains again from step 0 when one is appended.


rule import_pretrained:
    input:
        tokenizer=f"{R}/data/tokenizer",
    output:
        directory(model_dir("pretrained/{name}", 0)),
    log:
        f"{LOGS}/import/{{name}}.log",
    benchmark:
        f"{BENCH}/import/{{name}}.tsv"
    conda:
        ENV
    threads: threads("embed")
    resources:
        # an embedding job's memory (the whole model in float32), no GPU
        **res("embed", "import_pretrained", gpu=False),
    params:
        source=lambda w: imported_models()[w.name].name,
        config_key=lambda w: imported_models()[w.name].key,
        # Figure 3's chat model reads its own token files; every other model reads the workflow's
        reads_workflow_tokens=lambda w: imported_models()[w.name].reads_workflow_tokens,
    script:
        "../scripts/import_pretrained.py"


rule train_corpus_lm:
    input:
        unpack(continued_from("corpus_lm/{shape}", "corpus_lm")),
        examples=tokens("corpus_train"),
        tokenizer=f"{R}/data/tokenizer",
    output:
        directory(model_dir("corpus_lm/{shape}", "{step}")),
    log:
        f"{LOGS}/train/corpus_lm/{{shape}}/step-{{step}}.log",
    benchmark:
        f"{BENCH}/train/corpus_lm/{{shape}}/step-{{step}}.tsv"
    priority: 20
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train", "train_corpus_lm"),
    params:
        train=train_params("corpus_lm"),
        checkpoints=lambda w: [int(w.step)],
        start=lambda w: checkpoint_before("corpus_lm", w.step),
        shape=lambda w: canon(shape_of("corpus_lm", w.shape)),
        seed=config["corpus_lm"]["seed"],
        block_size=config["corpus"]["block_size"],
        n_positions=config["corpus"]["block_size"],
        drop_last_mlp=False,
        # each checkpoint holds the optimizer state the next checkpoint's job and the
        # memory's more-training control continue from
        keep_optimizer=True,
        work_dir=lambda w: work_dir(f"corpus_lm/{w.shape}", w.step),
    script:
        "../scripts/train.py"


rule train_memorization:
    input:
        examples=tokens("macondo_v1"),
        tokenizer=f"{R}/data/tokenizer",
    output:
        ckpt_dirs(memorization_model("{shape}", "{variant}", "{seed}"), "memorization"),
    log:
        f"{LOGS}/train/memorization/{{shape}}/{{variant}}/seed-{{seed}}.log",
    benchmark:
        f"{BENCH}/train/memorization/{{shape}}/{{variant}}/seed-{{seed}}.tsv"
    group:
        "memorization_run"
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train", "train_memorization"),
    params:
        train=train_params("memorization"),
        checkpoints=sorted(config["memorization"]["train"]["checkpoints"]),
        start=None,
        shape=lambda w: canon(shape_of("memorization", w.shape)),
        seed=lambda w: int(w.seed),
        block_size=None,
        n_positions=64,
        drop_last_mlp=lambda w: w.variant == "no_last_mlp",
        keep_optimizer=False,
        work_dir=lambda w: work_dir(memorization_model(w.shape, w.variant, w.seed)),
    script:
        "../scripts/train.py"


rule train_overspecification:
    input:
        examples=tokens("macondo_v2"),
        init=model_dir(*base_model(config["overspecification"]["base_model"])),
    output:
        ckpt_dirs(overspecification_model("{seed}"), "overspecification"),
    log:
        f"{LOGS}/train/overspecification/seed-{{seed}}.log",
    benchmark:
        f"{BENCH}/train/overspecification/seed-{{seed}}.tsv"
    priority: 10
    group:
        "overspecification_run"
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train", "train_overspecification"),
    params:
        train=train_params("overspecification"),
        checkpoints=sorted(config["overspecification"]["train"]["checkpoints"]),
        start=None,
        keep_optimizer=False,
        seed=lambda w: int(w.seed),
        work_dir=lambda w: work_dir(overspecification_model(w.seed)),
    script:
        "../scripts/finetune.py"


rule train_chat:
    input:
        unpack(
            continued_from(
                "chat", "chat", init=model_dir(*base_model(config["chat"]["model"]))
            )
        ),
        examples=tokens("chat_v2_train"),
    output:
        directory(model_dir("chat", "{step}")),
    log:
        f"{LOGS}/train/chat/step-{{step}}.log",
    benchmark:
        f"{BENCH}/train/chat/step-{{step}}.tsv"
    priority: 10
    conda:
        ENV
    threads: threads("train")
    resources:
        **res("train", "train_chat"),
    params:
        train=train_params("chat"),
        checkpoints=lambda w: [int(w.step)],
        start=lambda w: checkpoint_before("chat", w.step),
        keep_optimizer=True,  # the next checkpoint's job continues from it
        seed=config["chat"]["seed"],
        work_dir=lambda w: work_dir("chat", w.step),
    script:
        "../scripts/finetune.py"
