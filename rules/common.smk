# Path helpers, model references and input functions shared by every rule file.
#
# Models live in results/models/<model>/step-<step>, <model> being one of
#   corpus_lm/<shape>                       a corpus LM trained here (corpus_lm.shapes)
#   pretrained/<name>                       a model imported with from_pretrained (hub id or folder)
#   memorization/<shape>/<variant>/seed-<seed>   Figure 1's runs
#   overspecification/seed-<seed>           Figure 2's runs
#   chat                                    Figure 3's fine-tuned chat model
# Each setting is a wildcard of its own; nothing is parsed back out of a name.
#
# Priorities: Table 1's chain (train_corpus_lm -> datastore -> index -> knn_search
# -> projection -> table1) is the longest path, 20; the other chains that wait for
# the corpus LM (Figure 2's runs, Figure 3's fine-tuning) 10; Figure 1's runs,
# which wait for nothing, fill the other cores around them.
import re

from pathlib import Path

from knnlm_limits import costs
from knnlm_limits import config as knnlm_config
from knnlm_limits.config import datastore_sizes, previous_checkpoint
from knnlm_limits.index import EXACT, planned_kind
from knnlm_limits.families import KEY_KINDS
from knnlm_limits.memory import OBJECTIVES, memory_name, target_search_settings

R = config["results"]
LOGS = f"{R}/logs"
BENCH = f"{R}/benchmarks"
ENV = "../envs/knnlm.yaml"
# what a name in a path may hold (shape names, imported model folders)
NAME_CHARS = knnlm_config.NAME_CHARS
NAME = f"[{NAME_CHARS}]+"
CORPUS_MODEL = f"corpus_lm/{NAME}|pretrained/{NAME}"


# Jobs that download from the Hugging Face hub run where the workflow is started:
# compute nodes on many clusters have no internet.
localrules:
    corpus,
    tokenizer,
    import_pretrained,


wildcard_constraints:
    model=CORPUS_MODEL,
    shape=NAME,
    name=NAME,
    step=r"\d+",
    key="|".join(KEY_KINDS),
    split=r"train|valid|test",
    variant=r"full|no_last_mlp",
    seed=r"\d+",
    expansion=r"\d+",
    objective="|".join(OBJECTIVES),
    code=r"\d+",


def canon(value):
    """A config value with dict keys sorted, so reordering keys in a config file
    is not a params change (Snakemake compares params by their text)."""
    if isinstance(value, dict):
        return {k: canon(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canon(v) for v in value]
    return value


def last(steps):
    return max(steps)


def model_dir(model, step):
    return f"{R}/models/{model}/step-{step}"


def work_dir(model, step=None):
    """Where a training job keeps its resumable state and checkpoints until it publishes them
    (a job of one checkpoint: one folder a checkpoint)."""
    return f"{R}/models/{model}/.work" + ("" if step is None else f"-step-{step}")


def windowing():
    """The settings that cut a corpus stream into evaluation / datastore windows: every
    rule that lines its positions up with another's reads exactly these."""
    return {
        "block_size": config["corpus"]["block_size"],
        "stride": config["corpus"]["stride"],
    }


def figure_outputs(folder, name):
    """A figure as PNG and PDF with its numbers as CSV; the PNG and CSV go into the report
    with the caption report/<name>.rst."""
    caption, category = f"../report/{name}.rst", name.replace("figure", "Figure ")
    return {
        "png": report(f"{folder}/{name}.png", caption=caption, category=category),
        "pdf": f"{folder}/{name}.pdf",
        "csv": report(f"{folder}/{name}.csv", caption=caption, category=category),
    }


def tokens(name):
    return f"{R}/data/tokens/{name}.npz"


# A corpus kNN-LM is a scale point (model, step) with a datastore key (knn.keys): every
# path from the datastore on holds all three.


def knn_point(model, step, key):
    """The folder of a corpus kNN-LM under each stage's results folder."""
    return f"{model}/step-{step}/{key}"


# the wildcard pattern of a corpus kNN-LM's folder, for the logs and benchmarks of its jobs
POINT = knn_point("{model}", "{step}", "{key}")


# The corpus datastore is in knn.shards shards (knnlm_limits.shards): each is embedded,
# indexed and searched by jobs of its own; a merge joins their answers. Every shard's path
# says how many shards there are (SHARDS): another count is other files, whatever the
# workflow's metadata remembers.


def shards(count=None):
    """The datastore's shards in order (the first `count` of them)."""
    return list(range(config["knn"]["shards"] if count is None else count))


SHARDS = f"{config['knn']['shards']}-shards"


def datastore(model, step, key, shard):
    """A shard's files: float16 keys, int32 values, the training positions of its entries
    (read by inspection only) and shard.json (its offset: ids are global)."""
    base = f"{R}/datastores/{knn_point(model, step, key)}/{SHARDS}/shard-{shard}"
    return {
        "key_file": f"{base}/keys.npy",
        "value_file": f"{base}/values.npy",
        "position_file": f"{base}/positions.npy",
        "manifest": f"{base}/shard.json",
    }


def datastore_files(model, step, key, name, count=None):
    """One file (key_file, value_file, position_file, manifest) of every shard, in order."""
    return [datastore(model, step, key, s)[name] for s in shards(count)]


def index_kind():
    """exact, or the FAISS factory of the corpus datastores, chosen while planning (index.planned_kind)."""
    return planned_kind(config)


def trained_index_dir(model, step, key):
    """The approximate index trained once, with no keys (its quantizer and codebooks)."""
    return f"{R}/indexes/{knn_point(model, step, key)}/trained"


def shard_index_dir(model, step, key, shard):
    """A copy of the trained index holding one shard's keys."""
    return f"{R}/indexes/{knn_point(model, step, key)}/{SHARDS}/shard-{shard}"


def shard_search_inputs(model, step, key, shard):
    """What searching a shard reads: its keys (exact search, re-ranking) and values, and
    its index where the search is approximate (exact search needs none)."""
    files = datastore(model, step, key, shard)
    out = {"key_file": files["key_file"], "value_file": files["value_file"]}
    if index_kind() != EXACT:
        out["index"] = shard_index_dir(model, step, key, shard)
    return out


def lm_pass_file(model, step, key, split):
    """The LM pass over an evaluated split: targets, log p_lm (knnlm.SearchResults, no neighbours)."""
    return f"{R}/knn/{knn_point(model, step, key)}/{split}_lm.npz"


def shard_answer_dir(model, step, key, shard):
    """One shard's answer to every query of the search (shards.answer_shard)."""
    return f"{R}/knn/{knn_point(model, step, key)}/{SHARDS}/shard-{shard}"


def knn_file(model, step, key, evalset):
    """The search results, merged over every shard."""
    return f"{R}/knn/{knn_point(model, step, key)}/{evalset}.npz"


def first_shards_file(model, step, key, size, split):
    """The search results of a datastore of the first `size` shards (the datastore-size curve);
    of all shards: the search results themselves."""
    if size != "{size}" and int(size) == config["knn"]["shards"]:
        return knn_file(model, step, key, split)
    return f"{R}/knn/{knn_point(model, step, key)}/{SHARDS}/first-{size}/{split}.npz"


def knn_ids_file(model, step, key):
    """The test split's neighbour ids (datastore rows), for the inspection of neighbours."""
    return f"{R}/knn/{knn_point(model, step, key)}/test_ids.npy"


def knn_exact_sample(model, step, key):
    """Exact neighbours of sampled test queries where the index is approximate (else empty)."""
    return f"{R}/knn/{knn_point(model, step, key)}/test_exact_sample.npz"


def search_queries(model, step, key):
    """The search's query keys of each evaluated split, float32 (N, d): every shard's search,
    the memory and the frontier's compressed datastores read them (one LM pass)."""
    base = f"{R}/knn/{knn_point(model, step, key)}"
    return {
        f"queries_{split}": f"{base}/{split}_queries.npy" for split in ("valid", "test")
    }


def search_results(model, step, key):
    """The search's stored results of each evaluated split (knnlm.SearchResults)."""
    return {
        f"found_{split}": knn_file(model, step, key, split)
        for split in ("valid", "test")
    }


def table1_dir(model, step, key):
    return f"{R}/table1/{knn_point(model, step, key)}"


# the wildcard pattern of a corpus kNN-LM's Table 1 folder (its table, grid, projection, inspection)
T1 = table1_dir("{model}", "{step}", "{key}")


# ---------------------------------------------------------------- imported models


slug = knnlm_config.folder_name


def imported_models():
    """{folder name: the config setting naming it (config.ModelSetting)} of every model
    imported with from_pretrained: the corpus LMs, Figure 2's base model and Figure 3's chat
    model."""
    return {slug(name): s for name, s in knnlm_config.imported_models(config).items()}


def imported(name):
    """(model, step) of a model imported from a hub id or path."""
    return f"pretrained/{slug(name)}", 0


# ---------------------------------------------------------------- corpus LMs: the scale points


def shape_of(section, name):
    return next(s for s in config[section]["shapes"] if s["name"] == name)


def corpus_points():
    """Every (model, step) whose Table 1 is computed: each trained shape at each
    checkpoint, each pretrained corpus LM as it is."""
    steps = sorted(config["corpus_lm"]["train"]["checkpoints"])
    trained = [
        (f"corpus_lm/{s['name']}", step)
        for s in config["corpus_lm"]["shapes"]
        for step in steps
    ]
    return trained + [imported(name) for name in config["corpus_lm"]["pretrained"]]


def knn_points():
    """Every (model, step, key) whose datastore, search and Table 1 are computed."""
    return [(m, s, key) for m, s in corpus_points() for key in config["knn"]["keys"]]


def first_corpus_lm():
    """The corpus LM other experiments build on: the first shape's last checkpoint,
    else the first pretrained corpus LM."""
    shapes = config["corpus_lm"]["shapes"]
    if shapes:
        return f"corpus_lm/{shapes[0]['name']}", last(
            config["corpus_lm"]["train"]["checkpoints"]
        )
    return imported(config["corpus_lm"]["pretrained"][0])


def base_model(name):
    """(model, step) of a model named in the config: 'corpus_lm' or a hub id / path."""
    return first_corpus_lm() if name == "corpus_lm" else imported(name)


def point_scale(model, step, key):
    """What findings report of a kNN-LM point besides its model's own config."""
    if model.startswith("corpus_lm/"):
        train = config["corpus_lm"]["train"]
        tokens_seen = int(step) * train["batch_size"] * config["corpus"]["block_size"]
        return {
            "model": model,
            "step": int(step),
            "train_tokens": tokens_seen,
            "key": key,
        }
    return {"model": model, "step": None, "train_tokens": None, "key": key}


def chat_tokenizer():
    """The tokenizer of Figure 3's chat model: the workflow's, or the imported model's own."""
    name = config["chat"]["model"]
    model, step = base_model(name)
    if model.startswith("corpus_lm/"):
        return f"{R}/data/tokenizer"
    return model_dir(model, step)


# ---------------------------------------------------------------- training runs


def train_params(section):
    """The training settings a training job reads, the checkpoint list aside: the steps a run
    takes do not depend on where it stops, so appending a checkpoint changes no existing job's
    params (a job's own checkpoints are its params `checkpoints` / `step`)."""
    return {
        k: v for k, v in canon(config[section]["train"]).items() if k != "checkpoints"
    }


def checkpoint_before(section, step):
    """The checkpoint a job of one checkpoint continues from (None: the first)."""
    steps = config[section]["train"]["checkpoints"]
    return previous_checkpoint(steps, step, f"{section}.train.checkpoints")


def continued_from(model, section, init=None):
    """Input function of a job of one checkpoint: the checkpoint it continues from, or for
    the first, `init` (the model a fine-tuning starts from; None: random weights)."""

    def start(w):
        before = checkpoint_before(section, w.step)
        if before is not None:
            return {"previous": model_dir(model, before)}
        return {} if init is None else {"init": init}

    return start


def ckpt_dirs(model, section):
    """A whole run's checkpoint folders, in the order of its job's params.checkpoints."""
    steps = sorted(config[section]["train"]["checkpoints"])
    return [directory(model_dir(model, s)) for s in steps]


def memorization_model(shape, variant, seed):
    return f"memorization/{shape}/{variant}/seed-{seed}"


def overspecification_model(seed):
    return f"overspecification/seed-{seed}"


def run_checkpoints(model, section):
    return [
        model_dir(model, s) for s in sorted(config[section]["train"]["checkpoints"])
    ]


def macondo_runs(experiment):
    """Every training run of Figure 1 (memorization) or Figure 2 (overspecification) by its
    model name, with what evaluating it reads: the sentences it was trained on, whether
    it has a kNN-LM (whose datastore holds them) and, for Figure 1, its shape."""
    if experiment == "memorization":
        m = config["memorization"]
        return {
            memorization_model(s["name"], v, seed): {
                "sentences": "macondo_v1",
                "knn": v in m["knn_variants"],
                "shape": s["name"],
            }
            for s in m["shapes"]
            for v in m["variants"]
            for seed in m["seeds"]
        }
    return {
        overspecification_model(seed): {
            "sentences": "macondo_v2",
            "knn": True,
            "memory": config["memory"]["figure2"] != "none",
        }
        for seed in config["overspecification"]["seeds"]
    }


def children_results(model):
    """The children_eval output of a Macondo run."""
    return f"{R}/children/{model}.npz"


def macondo_run(w):
    """The run a children_eval job evaluates (wildcards experiment and run)."""
    runs, name = macondo_runs(w.experiment), f"{w.experiment}/{w.run}"
    if name not in runs:
        raise ValueError(
            f"children/{name}.npz: config.{w.experiment} has no such run ({', '.join(sorted(runs))})"
        )
    return runs[name]


def knn_settings():
    """Exactly the kNN settings a Macondo run's search reads (not lambda or T)."""
    keys = (
        "k",
        "batch_tokens",
        "exact_max_keys",
        "exact_index",
        "approximate_index",
        "index_train_sample",
        "nprobe",
        "rerank",
    )
    # Figures 1 and 2 search with the first key listed
    return {k: config["knn"][k] for k in keys} | {"key": config["knn"]["keys"][0]}


def macondo_search(w):
    """What a Macondo run's evaluation searches with (None: the LM alone): the kNN settings
    and, for Figure 2's runs, the memory trained on the run's datastore (memory.figure2).
    """
    run = macondo_run(w)
    if not run["knn"]:
        return None
    if not run.get("memory"):
        return knn_settings()
    m = config["memory"]
    keys = ("layers", "expansion", "head", "alpha", "kl_positions", "seed")
    keys += ("lr", "warmup_steps", "weight_decay")
    memory = {k: m[k] for k in keys} | {
        "epochs": m["figure2_epochs"],  # its own budget: a Macondo datastore is small
        "batch_size": m["figure2_batch_size"],
        "temperature": config["knn"]["temperature"],  # of its kNN targets
        "checkpoints": m["figure2"],
    }
    return knn_settings() | {"memory": memory}


def index_settings():
    keys = ("exact_max_keys", "exact_index", "approximate_index", "index_train_sample")
    return {k: config["knn"][k] for k in keys}


# ---------------------------------------------------------------- the parametric memory


def kl_targets_dir(model, step, key):
    """The kNN targets of the memory's sampled datastore entries (rules/memory.smk)..."""
    return f"{R}/memory/{knn_point(model, step, key)}/kl_targets"


def kl_queries_dir(model, step, key):
    """...their entry ids and keys (the targets' queries, gathered from the shards)..."""
    return f"{R}/memory/{knn_point(model, step, key)}/kl_queries"


def kl_answer_dir(model, step, key, shard):
    """...and one shard's answer to them, before the merge."""
    return f"{R}/memory/{knn_point(model, step, key)}/{SHARDS}/kl_shard-{shard}"


def memory_file(model, step, key, expansion, objective, name):
    """A memory of the datastore's `name`: its model, log-probs, query costs, work folder."""
    return f"{R}/memory/{knn_point(model, step, key)}/{memory_name(expansion, objective)}/{name}"


def memory_variants():
    """(expansion, objective) of every memory at a kNN-LM point: the memory (memory.expansion)
    imitating p_kNN, its keys-to-values control (alpha 0; none when memory.alpha is 0
    already), and memory.sizes' other expansions, imitating."""
    m = config["memory"]
    out = [(m["expansion"], "imitation")]  # main_memory()
    if memory_control():
        out.append((m["expansion"], "values"))
    return out + [(e, "imitation") for e in m["sizes"] if e != m["expansion"]]


def main_memory():
    """The memory of the table's findings: memory.expansion, imitating p_kNN."""
    return memory_name(config["memory"]["expansion"], "imitation")


def memory_control():
    """The name of the keys-to-values control memory, or None when alpha is 0 (it is the memory)."""
    return (
        memory_name(config["memory"]["expansion"], "values")
        if config["memory"]["alpha"] > 0
        else None
    )


def memory_shape(expansion):
    m = config["memory"]
    return {"layers": m["layers"], "expansion": int(expansion), "head": m["head"]}


def memory_alpha(objective):
    return config["memory"]["alpha"] if objective == "imitation" else 0.0


def memory_train_settings():
    """Exactly the training settings a memory's training reads."""
    keys = (
        "epochs",
        "batch_size",
        "lr",
        "warmup_steps",
        "weight_decay",
        "save_every",
        "seed",
    )
    return {k: config["memory"][k] for k in keys}


def memory_budget():
    """What the more-training control's budget is computed from: the memory's shape and epochs,
    and (a compute budget) what its kNN targets' search costs follows from."""
    m = config["memory"]
    compute = m["control_budget"] == "compute"
    return {
        "memory_shape": memory_shape(m["expansion"]),
        "budget": {
            "control_budget": m["control_budget"],
            "epochs": m["epochs"],
            "target_search": (
                target_search_settings(config["knn"], m, index_kind())
                if compute
                else None
            ),
        },
    }


def datastore_and_indexes(model, step, key):
    """Every shard's keys, values and shard.json, and its index where the search is approximate."""
    out = {
        "key_files": datastore_files(model, step, key, "key_file"),
        "value_files": datastore_files(model, step, key, "value_file"),
        "manifests": datastore_files(model, step, key, "manifest"),
    }
    if index_kind() != EXACT:
        out["indexes"] = [shard_index_dir(model, step, key, s) for s in shards()]
    return out


def memory_inputs(w):
    """What a memory's training job reads: the datastore, the kNN targets (not for the
    keys-to-values control), the LM (its head), the search's queries and targets, the shards'
    indexes (to time the search beside the memory)."""
    point = (w.model, w.step, w.key)
    out = {
        **datastore_and_indexes(*point),
        "lm": model_dir(w.model, w.step),
        **search_queries(*point),
        **search_results(*point),
    }
    if memory_alpha(w.objective) > 0:
        out["kl"] = kl_targets_dir(*point)
    return out


def more_training_model(model, step):
    """The scale point's LM trained further: the memory's more-training control."""
    return f"{R}/models/{model}/more_training/from-step-{step}"


def more_training_logprobs(model, step):
    return f"{R}/memory/{model}/step-{step}/more_training.npz"


def has_more_training(model):
    """Only an LM trained here has the optimizer state a control continues from."""
    return model.startswith("corpus_lm/")


def frontier_trained_dir(model, step, key, code):
    """A product-quantised datastore of the frontier: its index trained once, no keys..."""
    return f"{R}/frontier/{knn_point(model, step, key)}/pq{code}/trained"


def frontier_shard_dir(model, step, key, code, shard, part):
    """...a shard's codes (part 'index': its index, no keys kept) and its answer to the
    evaluated queries (part 'answer')..."""
    return f"{R}/frontier/{knn_point(model, step, key)}/pq{code}/{SHARDS}/shard-{shard}/{part}"


def frontier_file(model, step, key, code, split):
    """...and the search results through it, merged over the shards."""
    return f"{R}/frontier/{knn_point(model, step, key)}/pq{code}/{split}.npz"


def memory_table_inputs(w):
    """What the memory table of a kNN-LM point reads: the search, Table 1's grid, every
    memory, the more-training control, the frontier's datastores and what each stores.
    """
    point = (w.model, w.step, w.key)
    variants = memory_variants()
    codes = config["memory"]["frontier_pq"]
    out = {
        **search_results(*point),
        "grid": f"{table1_dir(*point)}/grid.csv",
        "model": model_dir(w.model, w.step),  # its config.json: the scale point's shape
        **datastore_and_indexes(*point),
        "logprobs": [memory_file(*point, e, o, "logprobs.npz") for e, o in variants],
        "footprints": [memory_file(*point, e, o, "footprint.csv") for e, o in variants],
        "costs": [memory_file(*point, e, o, "query_costs.csv") for e, o in variants],
        "pq_valid": [frontier_file(*point, c, "valid") for c in codes],
        "pq_test": [frontier_file(*point, c, "test") for c in codes],
        # each code size's shards' indexes, code by code
        "pq_index": [
            frontier_shard_dir(*point, c, s, "index") for c in codes for s in shards()
        ],
    }
    if has_more_training(w.model):
        out["more"] = more_training_logprobs(w.model, w.step)
    return out


# ---------------------------------------------------------------- resources


def _job_estimate(rule_name, kind, uses_gpu, wildcards, facts=None):
    """The cost model's estimate of one job (knnlm_limits/costs); facts(wildcards) adds
    what the cost model needs that the wildcards do not say."""
    w = dict(wildcards.items()) | (facts(wildcards) if facts else {})
    if "name" in w and w["name"] in imported_models():
        w["source"] = imported_models()[w["name"]].name
    return costs.estimate(
        rule_name,
        config,
        w,
        threads=threads(kind),
        uses_gpu=uses_gpu,
        base_dir=Path(workflow.basedir),
    )


def res(kind, rule_name, gpu=True, facts=None):
    """Snakemake resources of a job: memory and runtime from the cost model (raised on a
    retry, between config.resources.<kind>'s floor and cap), the kind's GPUs unless
    gpu=False, and the first cluster partition that fits."""
    caps = config["resources"][kind]
    uses_gpu = bool(caps["gpus"]) and gpu

    estimates = {}  # one cost-model estimate per job, however many resources read it

    def estimate(w):
        job = tuple(sorted(w.items()))
        if job not in estimates:
            estimates[job] = _job_estimate(rule_name, kind, uses_gpu, w, facts)
            costs.record(rule_name, dict(w.items()), estimates[job])  # for `make plan`
        return estimates[job]

    def requested(w, attempt):
        return costs.request(estimate(w), caps, attempt)

    def partition(w, attempt):
        est = estimate(w)
        return costs.partition(config, est, requested(w, attempt)["runtime"])

    out = {
        "mem_mb": lambda w, attempt: requested(w, attempt)["mem_mb"],
        "runtime": lambda w, attempt: requested(w, attempt)["runtime"],
        "slurm_partition": partition,
    }
    if uses_gpu:
        out["gpu"] = caps["gpus"]
    return out


def threads(kind):
    return config["resources"][kind]["threads"]


def all_targets():
    figure1 = [
        f"{R}/figure1/{s['name']}/figure1.png" for s in config["memorization"]["shapes"]
    ]
    table1 = [f"{table1_dir(*point)}/table1.md" for point in knn_points()]
    neighbours = [f"{table1_dir(*point)}/neighbours.html" for point in knn_points()]
    memory = [f"{table1_dir(*point)}/memory.md" for point in knn_points()]
    return [
        *table1,
        *neighbours,
        *memory,
        *figure1,
        f"{R}/figure2/figure2.png",
        f"{R}/figure3/figure3.png",
        f"{R}/findings.md",
        f"{R}/findings_by_scale.png",
    ]
