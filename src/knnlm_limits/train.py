"""Training stage: a lean, resumable training loop for any causal LM on any Examples.

Determinism and resumption come from one rule: everything step s does (its
batch, its dropout noise, its learning rate) is a function of (seed, s) alone.
Resumable state therefore needs only the weights and the optimizer state.

Layout of ``work_dir`` while a run is in progress:

    step-N/   each checkpoint of ``settings.checkpoints`` reached so far (save_pretrained)
    state/    the latest resumable state: weights, optimizer, and meta.json with
              the step and the run's fingerprint (settings, seed, examples,
              initial weights); written every ``save_every`` steps and at every
              checkpoint, always after that step's checkpoint folder

A rerun resumes from ``state/`` only if its fingerprint matches; otherwise the
work folder is discarded (one log line). When training ends, the checkpoint
folders are *linked* into the declared outputs (the work copies stay), and only
then is ``work_dir`` removed, state first: a job killed while publishing still
finishes on rerun, even though Snakemake deletes a killed job's outputs.

Weights are trained in float32 whatever dtype a checkpoint was saved in; on a
GPU the forward and backward passes run under bf16 autocast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import io
from .model import check_context, device_of, head_split
from .tokens import Examples, pad_batch, scored_mask


# Logits per chunk of HeadCrossEntropy. On a 2-core CPU 2M-32M floats all ran a step
# 1.1-1.3x faster than full logits, 0.5M did not (benchmarks/train_step.py); 2M keeps
# a chunk at 8 MB. A GPU wants big matrix products.
HEAD_CHUNK_CPU = 2**21
HEAD_CHUNK_CUDA = 2**26


@dataclass
class TrainSettings:
    checkpoints: list[int]  # steps to save; training stops at the last
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    save_every: int | None = None  # resumable state every this many steps (and at checkpoints)
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return max(self.checkpoints)

    def saves_state_after(self, step: int) -> bool:
        """Whether the state is saved once `step` steps are done."""
        return step in self.checkpoints or bool(self.save_every and step % self.save_every == 0)


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then constant: earlier checkpoints do not depend on later ones."""
    if s.warmup_steps and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    return s.lr


def batch_indices(step: int, n_examples: int, s: TrainSettings) -> np.ndarray:
    """The example indices of step `step`: epochs of seeded permutations, stateless."""
    flat = step * s.batch_size + np.arange(s.batch_size)
    epochs, positions = np.divmod(flat, n_examples)
    out = np.empty(s.batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([s.seed, int(epoch)]).permutation(n_examples)
        sel = epochs == epoch
        out[sel] = perm[positions[sel]]
    return out


class HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softmax(z W^T) at `targets`, chunk by chunk of rows.

    The (N, V) logits never exist in full: each chunk's logits become its
    softmax in place, and its gradient p - onehot(target) is multiplied out at
    once into dL/dz and dL/dW (the loss is the end of the graph, so the
    gradient is known in the forward pass; backward only scales it). Same
    three matrix products as logits + cross_entropy, without the full-size
    log-softmax, its backward and the zero-filled gradient: 1.16-1.22x faster
    CPU training steps at a 16k vocabulary, and (N, V) floats less GPU memory.
    """

    @staticmethod
    def forward(ctx, z, weight, targets, chunk):
        n = z.size(0)
        grad_z = torch.empty_like(z)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=z.device)
        for lo in range(0, n, chunk):
            z_chunk, t_chunk = z[lo:lo + chunk], targets[lo:lo + chunk]
            rows = torch.arange(len(t_chunk), device=z.device)
            p = torch.matmul(z_chunk, weight.t()).float()  # logits, then probabilities in place
            target_logit = p[rows, t_chunk]
            top = p.amax(1, keepdim=True)
            p.sub_(top).exp_()
            norm = p.sum(1, keepdim=True)
            total += (norm.log() + top).sum() - target_logit.sum()  # sum of logsumexp - target logit
            p.div_(norm * n)
            p[rows, t_chunk] -= 1.0 / n  # (softmax - onehot) / n = dL/dlogits
            grad_z[lo:lo + chunk] = torch.matmul(p, weight).to(z.dtype)
            grad_w += torch.matmul(p.t(), z_chunk).float()
        ctx.save_for_backward(grad_z, grad_w)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_z, grad_w = ctx.saved_tensors
        return grad_z * grad_loss, (grad_w * grad_loss).to(ctx.weight_dtype), None, None


def lm_loss(model, ids: torch.Tensor, targets_scored: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the scored targets (B, T-1).

    Padding is never scored; for a chat turn only the assistant's answer is.
    Models of a known family go through HeadCrossEntropy on the scored
    positions only; any other causal LM through its full logits.
    """
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:].masked_fill(~targets_scored, -100)
    scored = targets != -100
    split = head_split(model)
    if split is None:
        # The targets are shifted, not the logits: slicing (B, T, V) would copy it.
        logits = model(input_ids=ids, use_cache=False).logits
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100
        )
    body, head = split
    z = body(input_ids=ids, use_cache=False).last_hidden_state
    chunk = max(1, (HEAD_CHUNK_CUDA if z.is_cuda else HEAD_CHUNK_CPU) // head.weight.size(0))
    return HeadCrossEntropy.apply(z[scored], head.weight, targets[scored], chunk)


def _optimizer(model, s: TrainSettings):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    # fused: one kernel for all parameters, 5x faster than the per-tensor loop on a CPU (7 ms
    # instead of 36 ms a step for the default 4x128 model: a sixth of a Macondo step)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr, fused=True,
    )


def fingerprint(model, examples: Examples, s: TrainSettings) -> str:
    """What a resumable state must have been made from: settings, seed, examples, initial model."""
    digest = hashlib.blake2b(digest_size=16)
    settings = {k: v for k, v in asdict(s).items() if k != "save_every"}  # how often, not what
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(type(model).__name__.encode())
    digest.update(model.config.to_json_string(use_diff=True).encode())
    for array in (examples.tokens, examples.starts, examples.sizes, examples.score_start):
        digest.update(np.ascontiguousarray(array).tobytes())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save_state(model, optimizer, step: int, run_id: str, work_dir: Path) -> None:
    with io.atomic_path(work_dir / "state") as tmp:
        model.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "fingerprint": run_id}))


def _load_weights(model, ckpt_dir: Path) -> None:
    from safetensors.torch import load_file

    weights = load_file(ckpt_dir / "model.safetensors", device=str(device_of(model)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # save_pretrained leaves out a tied output matrix; nothing else may be missing.
    if unexpected or any(not k.startswith("lm_head.") for k in missing):
        raise RuntimeError(f"checkpoint {ckpt_dir} does not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()


def _resume(model, optimizer, work_dir: Path, run_id: str, s: TrainSettings, log) -> int:
    """Restore the state in work_dir if it was made by this very run; the step to start from."""
    meta_file = work_dir / "state" / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    step = meta["step"] if meta else 0
    reached = [c for c in s.checkpoints if c <= step]
    usable = (meta and meta["fingerprint"] == run_id
              and all((work_dir / f"step-{c}" / "model.safetensors").is_file() for c in reached))
    if not usable:
        if work_dir.exists() and any(work_dir.iterdir()):
            why = "another run's state (settings, seed, data or initial weights differ)" if meta else "no resumable state"
            print(f"discarding {work_dir}: {why}", file=log, flush=True)
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        return 0
    _load_weights(model, work_dir / "state")
    optimizer.load_state_dict(torch.load(work_dir / "state" / "optimizer.pt", weights_only=True,
                                         map_location=device_of(model)))  # tensors and numbers only
    print(f"resuming from step {step} in {work_dir}", file=log, flush=True)
    return step


def _link_tree(src: Path, dst: Path) -> None:
    """dst gets src's files as hard links (copies across file systems); src stays."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for item in src.iterdir():
        try:
            os.link(item, dst / item.name)
        except OSError:
            shutil.copy2(item, dst / item.name)


def _publish(work_dir: Path, out_dirs: dict[int, str]) -> None:
    for step, out in out_dirs.items():
        _link_tree(work_dir / f"step-{step}", Path(out))
    # the state first: a half-removed work_dir then holds no state to trust
    shutil.rmtree(work_dir / "state", ignore_errors=True)
    shutil.rmtree(work_dir)


def train(model, examples: Examples, s: TrainSettings, out_dirs: dict[int, str], work_dir, log=None) -> None:
    """Train `model` on `examples`, writing the checkpoint of each step in out_dirs."""
    work_dir = Path(work_dir)
    if sorted(out_dirs) != sorted(set(s.checkpoints)):
        raise ValueError("out_dirs must name one folder per checkpoint step")
    check_context(model, examples, "training examples")
    model.float()  # float32 master weights, whatever the checkpoint's dtype
    device = device_of(model)
    run_id = fingerprint(model, examples, s)
    optimizer = _optimizer(model, s)
    start = _resume(model, optimizer, work_dir, run_id, s, log)
    if start == 0 and 0 in s.checkpoints:
        with io.atomic_path(work_dir / "step-0") as tmp:
            model.save_pretrained(tmp)

    model.train()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(range(start, s.total_steps), initial=start, total=s.total_steps, file=log, mininterval=5, desc="train")
    for step in bar:
        torch.manual_seed(s.seed * 1_000_003 + step)  # this step's dropout noise
        idx = batch_indices(step, len(examples), s)
        ids, _ = pad_batch(examples, idx)
        scored = scored_mask(examples, idx, ids.size(1))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        with autocast:
            loss = lm_loss(model, ids.to(device), scored.to(device))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        done = step + 1
        if done in s.checkpoints:
            with io.atomic_path(work_dir / f"step-{done}") as tmp:
                model.save_pretrained(tmp)
        if s.saves_state_after(done) and done < s.total_steps:
            _save_state(model, optimizer, done, run_id, work_dir)
    bar.close()
    model.eval()
    # The finished run is a state too: a job killed while publishing resumes here.
    if start < s.total_steps:
        _save_state(model, optimizer, s.total_steps, run_id, work_dir)
    _publish(work_dir, out_dirs)
