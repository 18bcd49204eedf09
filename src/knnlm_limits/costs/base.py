"""What every stage's cost is made of: the Estimate, the per-unit costs file, the data
sizes a config gives, and the shared per-unit formulas (see the package docstring)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import yaml

from ..families import NO_LAST_MLP_SUFFIX, base_model_type

COSTS_FILE = Path(__file__).with_name("costs.yaml")
MB = 1e6
SEARCH_BATCH = 16_384  # queries searched at a time (index.Searcher.batches)


@lru_cache(maxsize=None)
def table(path: str = str(COSTS_FILE)) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def measured() -> dict:
    return table()["measured"]


def assumed() -> dict:
    return table()["assumed"]


def measured_gpu() -> dict:
    return table()["measured_gpu"]


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


def unknown(why: str, uses_gpu: bool = False) -> Estimate:
    return Estimate(None, None, uses_gpu=uses_gpu, notes=[why])


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
    """{params, d, layers, vocab} of a model config (HF config.json names, or a shape).

    The parameter count is the model's own for the families the workflow supports (a test
    holds it to transformers' instantiated models): GPT-2 (Conv1D weights and biases, two
    LayerNorms a block with biases, the final one, the position table where the spec gives
    n_positions) and the Llama family (q, k and v with grouped-query attention: k and v have
    num_key_value_heads heads of head_dim; the output projection; biases on q, k and v in
    Qwen2, on all four and the MLP where a Llama config sets attention_bias / mlp_bias; a
    gated MLP; two RMSNorms a layer and the final one). The head adds vocab x d only when it
    is not tied to the embedding (a GPT-2 config ties by default, a Llama-family one does
    not). A model saved without its last MLP (model type knnlm_<type>_no_last_mlp) has one
    MLP less. A shape from the config is the model model.build_model makes of it (tied, a
    Llama-family MLP of gated_width), less GPT-2's position table (its length is the block
    size, which the shape does not hold: 0.6% of GPT-2 small).
    """
    d = spec.get("n_embd") or spec.get("hidden_size")
    layers = spec.get("n_layer") or spec.get("num_hidden_layers")
    vocab = spec.get("vocab_size")
    if spec.get("params"):
        return {"params": float(spec["params"]), "d": d, "layers": layers, "vocab": vocab}
    model_type = spec.get("model_type") or spec.get("architecture") or ("gpt2" if "n_embd" in spec else "llama")
    base = base_model_type(model_type)
    mlps = layers - 1 if model_type.endswith(NO_LAST_MLP_SUFFIX) else layers
    if base == "gpt2":
        ff = spec.get("n_inner") or 4 * d
        attention = d * 3 * d + 3 * d + d * d + d  # c_attn (q, k, v) and c_proj, with biases
        mlp = d * ff + ff + ff * d + d  # c_fc and c_proj, with biases
        norms = 2 * 2 * d  # ln_1 and ln_2: weight and bias
        final_norm, positions = 2 * d, (spec.get("n_positions") or 0) * d
        tied = spec.get("tie_word_embeddings", True)
    else:
        heads = spec.get("num_attention_heads") or spec.get("n_head")
        kv_heads = spec.get("num_key_value_heads") or heads
        head_dim = spec.get("head_dim") or d // heads
        q, kv = heads * head_dim, kv_heads * head_dim
        attention = d * q + 2 * d * kv + q * d  # q, k, v (grouped) and the output projection
        if base == "qwen2":
            attention += q + 2 * kv  # Qwen2: biases on q, k and v
        elif spec.get("attention_bias"):
            attention += q + 2 * kv + d
        ff = spec.get("intermediate_size") or gated_width(d)
        mlp = 3 * d * ff + (2 * ff + d if spec.get("mlp_bias") else 0)  # gate, up and down
        norms, final_norm, positions = 2 * d, d, 0
        # a shape is built here, always tied (model.build_model); a config.json says
        tied = spec.get("tie_word_embeddings", "model_type" not in spec)
    embeddings = vocab * d + positions
    head = 0 if tied else vocab * d
    params = layers * (attention + norms) + mlps * mlp + final_norm + embeddings + head
    return {"params": float(params), "d": d, "layers": layers, "vocab": vocab}


def gated_width(d: int) -> int:
    """The gated MLP width model.mlp_width gives a Llama-family shape: 8d/3 rounded up to a
    multiple of 8 (here so that planning imports no torch; a test holds the two together)."""
    return -(-8 * d // 3 // 8) * 8


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


@dataclass
class Job:
    """What a stage's cost function knows of one job: its rule, the config, its wildcards (and
    the facts its rule adds to them), its threads and whether it holds a GPU."""

    rule: str
    config: dict
    wildcards: dict
    threads: int = 1
    uses_gpu: bool = False
    base_dir: Path | None = None

    @cached_property
    def train(self) -> int | None:
        return split_tokens(self.config, "train")

    @cached_property
    def valid(self) -> int | None:
        return split_tokens(self.config, "valid")

    @cached_property
    def test(self) -> int | None:
        return split_tokens(self.config, "test")

    def shape(self, section: str, name: str) -> dict:
        return shape_size(self.config, next(s for s in self.config[section]["shapes"] if s["name"] == name),
                          self.base_dir)

    def corpus_model_size(self) -> dict | None:
        """The size of the corpus LM of a scale point (wildcard model: a shape trained here, or
        an imported model's folder, pretrained/<its folder name>), or of an imported model (source)."""
        from ..config import folder_name

        model = self.wildcards.get("model", "")
        if model.startswith("corpus_lm/"):
            return self.shape("corpus_lm", model.split("/", 1)[1])
        if model.startswith("pretrained/") and not self.wildcards.get("source"):
            named = {f"pretrained/{folder_name(n)}": n for n in self.config["corpus_lm"]["pretrained"]}
            model = named.get(model, model)
        return named_model_size(self.config, self.wildcards.get("source") or model, self.base_dir)

    def named_size(self, name: str) -> dict | None:
        return named_model_size(self.config, name, self.base_dir)

    @property
    def shards(self) -> int:
        return self.config["knn"]["shards"]

    def shard_keys(self, n_keys: int | None) -> int | None:
        """Entries of the largest shard: an even share, give or take a batch of windows."""
        if n_keys is None:
            return None
        return min(n_keys, -(-n_keys // self.shards) + self.config["knn"]["batch_tokens"])


# ---------------------------------------------------------------- shared per-unit formulas


def seconds(flops: float, uses_gpu: bool, threads: int, float32: bool = False) -> float:
    """Seconds of `flops` on a GPU (bf16 autocast, as training runs; float32=True: a float32
    pass, as evaluation runs) or on `threads` CPU threads."""
    if uses_gpu:
        return flops / measured_gpu()["gpu_fp32_forward_flops" if float32 else "gpu_flops"]
    return flops / (measured()["cpu_flops_per_thread"] * max(1, threads))


def forward_seconds(size: dict, tokens: float, uses_gpu: bool, threads: int) -> float:
    """A float32 forward pass over `tokens` (datastore, evaluation: no autocast)."""
    return seconds(2 * size["params"] * tokens, uses_gpu, threads, float32=True)


def search_threads(threads: int, kind: str) -> float:
    """The threads' worth of a FAISS search on `threads` threads: the per-thread costs were
    fitted on 2; on 16 threads exact search ran at 0.74 and IVF-PQ at 0.29 of 8x that
    (measured_gpu: the GPU machine's CPU). kind: 'exact' or 'pq'."""
    threads = max(1, threads)
    return threads if threads <= 2 else threads * measured_gpu()[f"{kind}_search_thread_efficiency"]


def gpu_resident(size: dict, batch_tokens: int, uses_gpu: bool) -> float:
    """GPU MB of a model in float32 and the activations of one batch."""
    if not uses_gpu:
        return 0.0
    act = batch_tokens * size["d"] * measured_gpu()["activation_bytes_per_token_layer_dim"]
    return (size["params"] * 4 + act) / MB


def lm_pass_mb(config: dict, size: dict) -> float:
    """Peak MB of an LM pass over evaluation windows beyond the model (knnlm.lm_and_queries):
    a batch of knn.batch_tokens positions' logits over the vocabulary, held twice."""
    return config["knn"]["batch_tokens"] * size["vocab"] * 4 * measured()["lm_pass_logit_copies"] / MB


def positions_bytes(config: dict) -> float:
    """Bytes a job holds per evaluated position: its k neighbour distances (float32) and values (int32)."""
    return 8.0 * config["knn"]["k"]


def window_factor(config: dict) -> float:
    block = config["corpus"]["block_size"]
    stride = config["corpus"]["stride"] or block
    return block / stride  # each token is run through the model this many times


def small_job() -> Estimate:
    """Seconds of work on small tables (figures, findings, Macondo's text)."""
    return Estimate(measured()["light_process_mb"] + measured()["small_job_mb"], measured()["small_job_minutes"])


# ---------------------------------------------------------------- each stage's cost, by rule

ESTIMATORS: dict = {}  # rule name -> cost function of a Job


def cost(*rules: str):
    """Register a stage's cost function for the rules it prices."""
    def register(fn):
        for rule in rules:
            ESTIMATORS[rule] = fn
        return fn
    return register
