"""What each job costs: host memory, GPU memory, disk and wall time, from the config.

Every estimate is a count of the job's data (tokens, keys, queries, parameters)
times a per-unit cost. Per-unit costs measured on this project's CPU machines
(``benchmarks/job_costs.py`` fits them at three corpus sizes) and the few that
could not be measured here (GPU throughput, random reads on a cluster file
system) live in one file, ``costs.yaml`` beside this module, each marked
measured or assumed.

Sizes come from the config alone, so that a dry run on a fresh checkout plans
the same requests that the jobs later get: the token caps
(``corpus.max_train_tokens``, ``corpus.eval_tokens``) where set, else the split
sizes the config expects (``corpus.expected_tokens``). A size that neither
gives is unknown: the job then requests its ``resources.<kind>`` cap and the
plan says so.

Requests: the estimate times a margin, times the attempt on a retry, kept
between ``resources.<kind>.min_*`` (floor) and ``resources.<kind>.mem_mb`` /
``runtime`` (cap); a job whose estimate exceeds its cap is flagged by the plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

COSTS_FILE = Path(__file__).with_name("costs.yaml")
MB = 1e6
MEM_MARGIN, TIME_MARGIN = 1.3, 1.5  # request = estimate x margin (x attempt on a retry)


@lru_cache(maxsize=None)
def table(path: str = str(COSTS_FILE)) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


@dataclass
class Estimate:
    """One job's expected peak host RSS, GPU memory, bytes written and wall time."""

    mem_mb: float | None
    minutes: float | None
    gpu_mem_mb: float = 0.0
    disk_mb: float = 0.0
    uses_gpu: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return self.mem_mb is not None and self.minutes is not None


# ---------------------------------------------------------------- data sizes from the config


def split_tokens(config: dict, split: str) -> int | None:
    """Tokens of a corpus split as the workflow will hold them: the cap, else the expected size."""
    corpus = config["corpus"]
    cap = corpus["max_train_tokens"] if split == "train" else corpus["eval_tokens"][split]
    expected = (corpus.get("expected_tokens") or {}).get(split)
    known = [n for n in (cap, expected) if n]
    return min(known) if known else None


def _model_config(name_or_path: str, base_dir: Path | None) -> dict | None:
    """A hub id's or local folder's architecture: its config.json, or costs.yaml's table."""
    path = Path(name_or_path)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    return table()["known_models"].get(name_or_path)


def model_size(spec: dict) -> dict:
    """{params, d, layers, vocab} of a model config (HF config.json names, or a shape)."""
    d = spec.get("n_embd") or spec.get("hidden_size")
    layers = spec.get("n_layer") or spec.get("num_hidden_layers")
    vocab = spec.get("vocab_size")
    if spec.get("params"):
        return {"params": float(spec["params"]), "d": d, "layers": layers, "vocab": vocab}
    ff = spec.get("intermediate_size") or spec.get("n_inner") or 4 * d
    gated = "intermediate_size" in spec  # Llama family: gate, up and down projections
    per_layer = 4 * d * d + (3 if gated else 2) * d * ff
    head = vocab * d * (1 if spec.get("tie_word_embeddings", True) else 2)
    return {"params": float(layers * per_layer + head), "d": d, "layers": layers, "vocab": vocab}


def vocab_size(config: dict, base_dir: Path | None = None) -> int:
    pretrained = config["tokenizer"]["pretrained"]
    if pretrained:
        spec = _model_config(pretrained, base_dir)
        if spec and spec.get("vocab_size"):
            return int(spec["vocab_size"])
    return int(config["tokenizer"]["vocab_size"])


def shape_size(config: dict, shape: dict, base_dir: Path | None = None) -> dict:
    return model_size({**shape, "vocab_size": vocab_size(config, base_dir)})


def named_model_size(config: dict, name: str, base_dir: Path | None = None) -> dict | None:
    """Size of a model the config names ('corpus_lm' = the first corpus LM, else a hub id or path)."""
    if name == "corpus_lm":
        shapes = config["corpus_lm"]["shapes"]
        if shapes:
            return shape_size(config, shapes[0], base_dir)
        name = config["corpus_lm"]["pretrained"][0]
    spec = _model_config(name, base_dir)
    return model_size(spec) if spec else None


# ---------------------------------------------------------------- per-unit costs


def _seconds(flops: float, uses_gpu: bool, threads: int) -> float:
    c = table()
    if uses_gpu:
        return flops / c["assumed"]["gpu_flops"]
    return flops / (c["measured"]["cpu_flops_per_thread"] * max(1, threads))


def _train_memory(size: dict, tokens_per_step: int, uses_gpu: bool) -> tuple[float, float]:
    """(host MB, GPU MB) of training: float32 weights, gradients and two AdamW moments
    (16 bytes a parameter) plus activations per token in the batch."""
    c = table()["measured"]
    state = 16 * size["params"]
    activations = tokens_per_step * size["layers"] * size["d"] * table()["assumed"]["activation_bytes_per_token_layer_dim"]
    device = (state + activations) / MB
    host = c["process_mb"] + (size["params"] * 4 / MB if uses_gpu else device)
    return host, (device if uses_gpu else 0.0)


def _training(config: dict, section: str, size: dict | None, tokens_per_example: int, uses_gpu: bool,
              threads: int, data_tokens: int = 0) -> Estimate:
    if size is None:
        return Estimate(None, None, uses_gpu=uses_gpu, notes=["model size unknown: add it to costs.yaml known_models"])
    train = config[section]["train"]
    tokens_per_step = train["batch_size"] * tokens_per_example
    steps = max(train["checkpoints"])
    host, gpu = _train_memory(size, tokens_per_step, uses_gpu)
    host += data_tokens * table()["measured"]["train_bytes_per_data_token"] / MB
    seconds = _seconds(6 * size["params"] * tokens_per_step * steps, uses_gpu, threads)
    if uses_gpu:  # a small batch does not fill a GPU: each step costs its kernel launches at least
        seconds += steps * size["layers"] * table()["assumed"]["gpu_seconds_per_step_layer"]
    n_ckpt = len(train["checkpoints"])
    disk = n_ckpt * size["params"] * 4 / MB + 3 * size["params"] * 4 / MB  # checkpoints + resumable state
    return Estimate(host, seconds / 60, gpu, disk, uses_gpu)


def _forward(size: dict, tokens: float, uses_gpu: bool, threads: int) -> float:
    return _seconds(2 * size["params"] * tokens, uses_gpu, threads)


def _gpu_resident(size: dict, batch_tokens: int, uses_gpu: bool) -> float:
    if not uses_gpu:
        return 0.0
    act = batch_tokens * size["d"] * table()["assumed"]["activation_bytes_per_token_layer_dim"]
    return (size["params"] * 4 + act) / MB


def _positions_bytes(config: dict) -> float:
    """Bytes a job holds per evaluated position: its k neighbour distances (float32) and values (int32)."""
    return 8.0 * config["knn"]["k"]


def _window_factor(config: dict) -> float:
    block = config["corpus"]["block_size"]
    stride = config["corpus"]["stride"] or block
    return block / stride  # each token is run through the model this many times


def estimate(rule: str, config: dict, wildcards: dict, threads: int = 1, uses_gpu: bool = False,
             base_dir: Path | None = None) -> Estimate:
    """The expected cost of one job of `rule` with these wildcards under `config`."""
    m = table()["measured"]
    fixed = m["process_mb"]
    light = m["light_process_mb"]
    train, valid, test = (split_tokens(config, s) for s in ("train", "valid", "test"))

    def corpus_model_size():
        model = wildcards.get("model", "")
        if model.startswith("corpus_lm/"):
            shape = next(s for s in config["corpus_lm"]["shapes"] if s["name"] == model.split("/", 1)[1])
            return shape_size(config, shape, base_dir)
        return named_model_size(config, wildcards.get("source") or model, base_dir)

    if rule in ("corpus", "tokenizer"):
        # the split's text and its lines in RAM (hub datasets: an Arrow table besides)
        mem = None if train is None else light + train * m["text_bytes_per_token"] / MB
        mins = None if train is None else 1 + train * m["tokenizer_seconds_per_token"] / 60
        return Estimate(mem, mins, disk_mb=0 if train is None else train * 5 / MB)
    if rule == "corpus_tokens":
        n = {"train": train, "valid": valid, "test": test}[wildcards["split"]]
        if n is None:
            return Estimate(None, None, notes=["split size unknown: set corpus.expected_tokens"])
        return Estimate(light + n * m["corpus_tokens_bytes_per_token"] / MB,
                        1 + n * m["tokenizer_seconds_per_token"] / 60, disk_mb=n * 4 / MB)
    if rule == "train_corpus_lm":
        shape = next(s for s in config["corpus_lm"]["shapes"] if s["name"] == wildcards["shape"])
        return _training(config, "corpus_lm", shape_size(config, shape, base_dir), config["corpus"]["block_size"],
                         uses_gpu, threads, data_tokens=train or 0)
    if rule == "train_memorization":
        shape = next(s for s in config["memorization"]["shapes"] if s["name"] == wildcards["shape"])
        return _training(config, "memorization", shape_size(config, shape, base_dir), m["macondo_tokens_per_example"],
                         uses_gpu, threads)
    if rule == "train_overspecification":
        size = named_model_size(config, config["overspecification"]["base_model"], base_dir)
        return _training(config, "overspecification", size, m["macondo_tokens_per_example"], uses_gpu, threads)
    if rule == "train_chat":
        size = named_model_size(config, config["chat"]["model"], base_dir)
        return _training(config, "chat", size, m["chat_tokens_per_example"], uses_gpu, threads)
    if rule == "import_pretrained":
        size = named_model_size(config, wildcards.get("source", ""), base_dir)
        if size is None:
            return Estimate(None, None, notes=["model size unknown: add it to costs.yaml known_models"])
        return Estimate(fixed + 2 * size["params"] * 4 / MB, 5 + size["params"] * 4 / MB / m["download_mb_per_minute"],
                        disk_mb=size["params"] * 4 / MB)
    if rule == "datastore":
        size = corpus_model_size()
        if train is None or size is None:
            return Estimate(None, None, uses_gpu=uses_gpu, notes=["datastore size unknown"])
        mem = fixed + size["params"] * 4 / MB + train * m["datastore_bytes_per_token"] / MB
        seconds = _forward(size, train * _window_factor(config), uses_gpu, threads)
        disk = train * (2 * size["d"] + 4 + 8) / MB  # float16 keys, int32 values, int64 positions
        return Estimate(mem, seconds / 60, _gpu_resident(size, config["knn"]["batch_tokens"], uses_gpu), disk, uses_gpu)
    if rule == "index":
        return _index(config, corpus_model_size(), train, threads)
    if rule == "knn_search":
        return _search(config, corpus_model_size(), train, valid, test, threads, uses_gpu)
    if rule == "knn_gains":
        if test is None or train is None:
            return Estimate(None, None, notes=["split size unknown"])
        # the search results, a per-token table (~10 columns) and the training stream
        mem = light + test * (_positions_bytes(config) * m["interpolation_overhead"] + 200) / MB + train * 4 / MB
        return Estimate(mem, 1 + (test * config["knn"]["k"] * m["interpolation_seconds_per_cell"] + train * 2e-9) / 60,
                        disk_mb=test * 120 / MB)
    if rule == "search_fidelity":
        if test is None:
            return Estimate(None, None, notes=["split size unknown"])
        return Estimate(light + test * _positions_bytes(config) / MB, m["small_job_minutes"], disk_mb=1.0)
    if rule == "knn_neighbours":
        if test is None or train is None:
            return Estimate(None, None, notes=["split size unknown"])
        # the search results, both token streams; the ids and positions are memory maps read
        # only at the sampled rows
        mem = light + test * _positions_bytes(config) / MB + (train + test) * 4 / MB
        return Estimate(mem, m["small_job_minutes"], disk_mb=1.0)
    if rule in ("knnlm_grid", "table1"):
        n = valid if rule == "knnlm_grid" else test
        if n is None:
            return Estimate(None, None, notes=["split size unknown"])
        grid = len(config["table1"]["grid"]["lambda"]) * len(config["table1"]["grid"]["temperature"])
        work = n * config["knn"]["k"] * (len(config["table1"]["grid"]["temperature"]) if rule == "knnlm_grid" else 3)
        mem = light + n * (_positions_bytes(config) * m["interpolation_overhead"]) / MB
        return Estimate(mem, 1 + (work * m["interpolation_seconds_per_cell"] + grid * n * 1e-8) / 60)
    if rule == "projection":
        size = corpus_model_size()
        if test is None or size is None:
            return Estimate(None, None, uses_gpu=uses_gpu, notes=["split or model size unknown"])
        p = config["table1"]["projection"]
        rows = min(p["tokens"], test)
        batch = min(p["batch"], rows)
        # per batch row: the (V,) target, logits, softmax and gradient in float32, a few times over
        solver_mb = batch * size["vocab"] * 4 * m["projection_vocab_arrays"] / MB
        mem = fixed + size["params"] * 4 / MB + test * _positions_bytes(config) / MB + (0 if uses_gpu else solver_mb)
        iterations = p["steps"] * 2 + p["lbfgs_steps"] * 2  # f and f∘g by Adam, f by L-BFGS (with line search)
        flops = rows * iterations * 6 * size["vocab"] * size["d"]
        seconds = _seconds(flops, uses_gpu, threads) + _forward(size, test * _window_factor(config), uses_gpu, threads)
        return Estimate(mem, seconds / 60, (solver_mb + size["params"] * 4 / MB) if uses_gpu else 0.0, 0.0, uses_gpu)
    if rule in ("children_eval", "figure3"):
        section = "chat" if rule == "figure3" else wildcards["experiment"]
        if section == "memorization":
            shape = next(s for s in config["memorization"]["shapes"] if s["name"] == wildcards["shape"])
            size = shape_size(config, shape, base_dir)
        else:
            size = named_model_size(config, config[section]["model"] if rule == "figure3" else
                                    config["overspecification"]["base_model"], base_dir)
        if size is None:
            return Estimate(None, None, uses_gpu=uses_gpu, notes=["model size unknown"])
        n_ckpt = 1 if rule == "figure3" else len(config[section]["train"]["checkpoints"])
        tokens = m["macondo_eval_tokens"] * n_ckpt
        mem = fixed + 2 * size["params"] * 4 / MB + m["macondo_eval_mb"]
        seconds = _forward(size, tokens, uses_gpu, threads) + n_ckpt * m["checkpoint_load_seconds"]
        return Estimate(mem, 1 + seconds / 60, _gpu_resident(size, 8192, uses_gpu), 0.0, uses_gpu)
    # macondo, chat_tokens, figures, findings: seconds of work on small tables
    return Estimate(light + m["small_job_mb"], m["small_job_minutes"])


def _index(config: dict, size: dict | None, n_keys: int | None, threads: int) -> Estimate:
    from .index import choose

    m = table()["measured"]
    if n_keys is None or size is None:
        return Estimate(None, None, notes=["datastore size unknown"])
    kind = choose(n_keys, config["knn"])
    d = size["d"]
    if kind == "exact":
        return Estimate(m["light_process_mb"], 1)
    if kind in ("Flat", "SQfp16"):
        code = 4 * d if kind == "Flat" else 2 * d
        return Estimate(m["process_mb"] + n_keys * code / MB, 1 + n_keys * d * 1e-9 / 60, disk_mb=n_keys * code / MB)
    nlist, code = _ivf_shape(kind, d)
    sample = min(config["knn"]["index_train_sample"], n_keys)
    mem = m["process_mb"] + (sample * d * 4 + n_keys * (code + 8) + nlist * d * 4) / MB
    # training: k-means over the sample (25 iterations) and PQ codebooks; adding: each key to its list
    flops = 25 * sample * nlist * d * 2 + n_keys * nlist * d * 2 + n_keys * d * 256 * 2
    seconds = _seconds(flops, False, threads)
    return Estimate(mem, 1 + seconds / 60, disk_mb=n_keys * (code + 8) / MB)


def _ivf_shape(factory: str, d: int) -> tuple[int, int]:
    """(number of lists, bytes per code) of an 'IVF<n>,PQ<m>' / 'IVF<n>,SQ8' / 'IVF<n>,Flat' factory."""
    nlist, code = 1, 4 * d
    for part in factory.split(","):
        if part.startswith("IVF"):
            nlist = int("".join(ch for ch in part[3:] if ch.isdigit()) or 1)
        elif part.startswith("PQ"):
            m_sub = part[2:].split("x")
            code = int(m_sub[0]) * (int(m_sub[1]) if len(m_sub) > 1 else 8) // 8
        elif part == "SQ8":
            code = d
        elif part in ("SQfp16", "SQ16"):
            code = 2 * d
    return nlist, code


def _search(config: dict, size: dict | None, n_keys, valid, test, threads: int, uses_gpu: bool) -> Estimate:
    from .index import choose

    m, a = table()["measured"], table()["assumed"]
    if None in (n_keys, valid, test) or size is None:
        return Estimate(None, None, uses_gpu=uses_gpu, notes=["split or datastore size unknown"])
    knn, d = config["knn"], size["d"]
    k = min(knn["k"], n_keys)
    queries = valid + test
    biggest = max(valid, test)  # splits are searched one after the other
    mem = (m["process_mb"] + size["params"] * 4 / MB
           + biggest * (8 * k + 4 * d + m["search_bytes_per_position"]) / MB)
    kind = choose(n_keys, knn)
    seconds = _forward(size, queries * _window_factor(config), uses_gpu, threads)
    if kind in ("exact", "Flat", "SQfp16"):
        seconds += _seconds(2 * queries * n_keys * d, False, threads)
    else:
        nlist, code = _ivf_shape(kind, d)
        scanned = queries * n_keys * min(1.0, knn["nprobe"] / nlist)
        seconds += scanned * code * m["pq_seconds_per_code_byte"] / max(1, threads)
        mem += n_keys * (code + 8) / MB  # the index is read whole
        if knn["rerank"]:
            seconds += queries * k * a["random_read_seconds"] / max(1, threads)
        # the sampled test queries searched exactly too (search_fidelity)
        seconds += _seconds(2 * min(knn["fidelity_queries"], test) * n_keys * d, False, threads)
    disk = queries * 8 * k / MB + test * 8 * k / MB  # distances and values; the test split's ids
    return Estimate(mem, seconds / 60, _gpu_resident(size, knn["batch_tokens"], uses_gpu), disk, uses_gpu)


# ---------------------------------------------------------------- requests

ESTIMATE_FIELDS = ("known", "mem_mb", "runtime", "gpu_mem_mb", "disk_mb")


def as_resources(est: Estimate) -> dict:
    """The estimate as whole numbers (Snakemake resources are integers); known = 0 if it is not."""
    if not est.known:
        return dict.fromkeys(ESTIMATE_FIELDS, 0)
    return {"known": 1, "mem_mb": math.ceil(est.mem_mb), "runtime": math.ceil(est.minutes),
            "gpu_mem_mb": math.ceil(est.gpu_mem_mb), "disk_mb": math.ceil(est.disk_mb)}



def request(est: Estimate, caps: dict, attempt: int = 1) -> dict:
    """Snakemake resources for a job: estimate x margin x attempt, between floor and cap."""
    mem_cap, time_cap = caps["mem_mb"], caps["runtime"]
    if not est.known:
        return {"mem_mb": mem_cap, "runtime": time_cap}
    mem = max(caps["min_mem_mb"], math.ceil(est.mem_mb * MEM_MARGIN * attempt))
    runtime = max(caps["min_runtime"], math.ceil(est.minutes * TIME_MARGIN * attempt))
    return {"mem_mb": min(mem, mem_cap), "runtime": min(runtime, time_cap)}


def partition(config: dict, est: Estimate, runtime: int) -> str:
    """The first partition in cluster.partitions with what the job needs: a GPU with enough
    memory (or none), and time. If none has the time, the one with the most; if none has
    the GPU memory, the one with the most (the plan flags both)."""
    parts = config["cluster"]["partitions"]
    kind = [p for p in parts if (p["gpu_mem_mb"] > 0) == est.uses_gpu] or parts
    fits = [p for p in kind if p["gpu_mem_mb"] >= est.gpu_mem_mb] or [max(kind, key=lambda p: p["gpu_mem_mb"])]
    timely = [p for p in fits if p["max_runtime"] >= runtime] or [max(fits, key=lambda p: p["max_runtime"])]
    return timely[0]["name"]
