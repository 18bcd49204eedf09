# Path helpers, model references and input functions shared by every rule file.
import re

R = config["results"]
LOGS = f"{R}/logs"
BENCH = f"{R}/benchmarks"
ENV = "../envs/knnlm.yaml"


wildcard_constraints:
    model=r"[A-Za-z0-9_.=+-]+",
    step=r"\d+",
    data=r"corpus_train|macondo_v1|macondo_v2",
    evalset=r"corpus_valid|corpus_test|prompts_v1",
    split=r"train|valid|test",
    variant=r"full|no_last_mlp",
    seed=r"-?\d+",


def slug(name):
    """A hub id or path as a folder name: 'openai-community/gpt2' -> 'hub-openai-community--gpt2'."""
    return f"hub-{re.sub(r'[/]+', '--', str(name)).strip('-')}"


def model_dir(model, step):
    return f"{R}/models/{model}/step-{step}"


def tokens(name):
    return f"{R}/data/tokens/{name}.npz"


def datastore(model, step, data):
    base = f"{R}/datastores/{model}/step-{step}/{data}"
    return {"key_file": f"{base}/keys.npy", "value_file": f"{base}/values.npy"}


def index_file(model, step, data):
    return f"{R}/indexes/{model}/step-{step}/{data}/index.faiss"


def knn_file(model, step, data, evalset):
    return f"{R}/knn/{model}/step-{step}/{data}/{evalset}.npz"


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


# The corpus LM: trained here (model "corpus_lm") or a pretrained one imported
# once from the hub/path named in corpus_lm.pretrained (its step 0).
def corpus_lm():
    if config["corpus_lm"]["pretrained"]:
        return slug(config["corpus_lm"]["pretrained"]), 0
    return "corpus_lm", last(config["corpus_lm"]["train"]["checkpoints"])


def base_model(name):
    """(model, step) of a model named in the config: 'corpus_lm' or a hub id / path."""
    return corpus_lm() if name == "corpus_lm" else (slug(name), 0)


def pretrained_sources():
    """{hub id or path: the config key(s) naming it} for models imported from outside."""
    keys = {
        "corpus_lm.pretrained": config["corpus_lm"]["pretrained"],
        "overspecification.base_model": config["overspecification"]["base_model"],
        "scale.model": config["scale"]["model"],
    }
    sources = {}
    for key, name in keys.items():
        if name and name != "corpus_lm":
            sources[name] = " / ".join(filter(None, [sources.get(name), key]))
    return sources


def pretrained_source(model):
    """(name, config key) of the imported model whose folder is `model`."""
    return next((n, k) for n, k in pretrained_sources().items() if slug(n) == model)


def memorization_model(variant, seed):
    return f"memorization-{variant}-seed{seed}"


def overspec_model(seed):
    return f"overspec-seed{seed}"


def scale_tokenizer():
    """The tokenizer of the Figure 3 model: the workflow's, or the imported model's."""
    name = config["scale"]["model"]
    if name == "corpus_lm" and not config["corpus_lm"]["pretrained"]:
        return f"{R}/data/tokenizer"
    return model_dir(*base_model(name))


def train_params(section):
    """Exactly the training settings a training rule reads."""
    return canon(config[section]["train"])


def ckpt_dirs(model, section):
    steps = config[section]["train"]["checkpoints"]
    return [directory(model_dir(model, s)) for s in steps]


def corpus_knn(evalset):
    return knn_file(*corpus_lm(), "corpus_train", evalset)


def run_of(model):
    """(steps, datastore data, variant, seed, with kNN-LM) of a Macondo run."""
    if model.startswith("memorization-"):
        _, variant, seed = model.split("-")
        steps = config["memorization"]["train"]["checkpoints"]
        with_knn = variant in config["memorization"]["knn_variants"]
        return sorted(steps), "macondo_v1", variant, int(seed[4:]), with_knn
    _, seed = model.split("-")
    steps = config["overspecification"]["train"]["checkpoints"]
    return sorted(steps), "macondo_v2", "full", int(seed[4:]), True


def children_inputs(w):
    """kNN search results at every checkpoint, or just the checkpoints (LM only)."""
    steps, data, _, _, with_knn = run_of(w.model)
    if with_knn:
        return {"found": [knn_file(w.model, s, data, "prompts_v1") for s in steps]}
    return {"models": [model_dir(w.model, s) for s in steps]}


def res(kind):
    """Snakemake resources of a stage kind from config.resources."""
    r = config["resources"][kind]
    out = {"mem_mb": r["mem_mb"], "runtime": r["runtime"]}
    if r["gpus"]:
        out["gpu"] = r["gpus"]
    return out


def threads(kind):
    return config["resources"][kind]["threads"]


def all_targets():
    return [
        f"{R}/table1/table1.md",
        f"{R}/table1/projection_traces.png",
        f"{R}/table1/grid.png",
        f"{R}/figures/figure1.png",
        f"{R}/figures/figure2.png",
        f"{R}/figures/figure3.png",
    ]
