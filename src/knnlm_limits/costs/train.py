"""Costs of the training stage (rules/train.smk): the corpus LMs, Figure 1's runs, the
fine-tuning of Figures 2 and 3, and the import of pretrained models."""

from ..config import previous_checkpoint
from .base import Estimate, MB, Job, cost, measured, measured_gpu, seconds, unknown


def train_memory(size: dict, tokens_per_step: int, uses_gpu: bool) -> tuple[float, float]:
    """(host MB, GPU MB) of training: float32 weights, gradients and two AdamW moments
    (16 bytes a parameter) plus activations per token in the batch."""
    state = 16 * size["params"]
    activations = tokens_per_step * size["layers"] * size["d"] * measured_gpu()["activation_bytes_per_token_layer_dim"]
    device = (state + activations) / MB
    host = measured()["process_mb"] + (size["params"] * 4 / MB if uses_gpu else device)
    return host, (device if uses_gpu else 0.0)


def training(job: Job, size: dict | None, train: dict, tokens_per_example: int, data_tokens: int = 0,
             steps: int | None = None, checkpoints: int | None = None, keep_optimizer: bool = False) -> Estimate:
    """A training job of `size` with the settings `train` ({batch_size, checkpoints}): `steps`
    (default: up to the last checkpoint) of batch_size examples of tokens_per_example tokens,
    writing `checkpoints` checkpoints (default: all of them), each with its optimizer state
    if keep_optimizer."""
    if size is None:
        return unknown("model size unknown: add it to costs.yaml known_models", job.uses_gpu)
    tokens_per_step = train["batch_size"] * tokens_per_example
    steps = max(train["checkpoints"]) if steps is None else steps
    host, gpu = train_memory(size, tokens_per_step, job.uses_gpu)
    host += data_tokens * measured()["train_bytes_per_data_token"] / MB
    secs = seconds(6 * size["params"] * tokens_per_step * steps, job.uses_gpu, job.threads)
    if job.uses_gpu:  # a small batch does not fill a GPU: each step costs its kernel launches at least
        secs += steps * size["layers"] * measured_gpu()["gpu_seconds_per_step_layer"]
    n_ckpt = len(train["checkpoints"]) if checkpoints is None else checkpoints
    weights = size["params"] * 4 / MB
    # checkpoints (weights, and AdamW's two moments where kept) + the resumable state
    disk = n_ckpt * weights * (3 if keep_optimizer else 1) + 3 * weights
    return Estimate(host, secs / 60, gpu, disk, job.uses_gpu)


def segment(job: Job, section: str) -> tuple[int, int]:
    """(steps, checkpoints) of a job of one checkpoint: from the checkpoint before it."""
    step = int(job.wildcards["step"])
    before = previous_checkpoint(job.config[section]["train"]["checkpoints"], step, f"{section}.train.checkpoints")
    return step - (before or 0), 1


@cost("train_corpus_lm")
def corpus_lm(job: Job) -> Estimate:
    steps, checkpoints = segment(job, "corpus_lm")
    return training(job, job.shape("corpus_lm", job.wildcards["shape"]), job.config["corpus_lm"]["train"],
                    job.config["corpus"]["block_size"], data_tokens=job.train or 0, steps=steps,
                    checkpoints=checkpoints, keep_optimizer=True)


@cost("train_memorization")
def memorization(job: Job) -> Estimate:
    return training(job, job.shape("memorization", job.wildcards["shape"]), job.config["memorization"]["train"],
                    measured()["macondo_tokens_per_example"])


@cost("train_overspecification")
def overspecification(job: Job) -> Estimate:
    return training(job, job.named_size(job.config["overspecification"]["base_model"]),
                    job.config["overspecification"]["train"], measured()["macondo_tokens_per_example"])


@cost("train_chat")
def chat(job: Job) -> Estimate:
    steps, checkpoints = segment(job, "chat")
    return training(job, job.named_size(job.config["chat"]["model"]), job.config["chat"]["train"],
                    measured()["chat_tokens_per_example"], steps=steps, checkpoints=checkpoints, keep_optimizer=True)


@cost("import_pretrained")
def import_pretrained(job: Job) -> Estimate:
    size = job.named_size(job.wildcards.get("source", ""))
    if size is None:
        return unknown("model size unknown: add it to costs.yaml known_models")
    m = measured()
    return Estimate(m["process_mb"] + 2 * size["params"] * 4 / MB,
                    5 + size["params"] * 4 / MB / m["download_mb_per_minute"], disk_mb=size["params"] * 4 / MB)
