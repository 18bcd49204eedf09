"""Training stage: a lean, resumable training loop for any causal LM on any Examples.

Determinism and resumption come from one rule: everything step s does (its
batch, its dropout noise, its learning rate) is a function of (seed, s) alone.
A checkpoint therefore needs only the weights and the optimizer state; a run
killed at any point resumes from its last complete checkpoint and ends with the
same weights as an uninterrupted run (same seed, CPU).

Checkpoints go to ``work_dir/step-N/`` (weights via save_pretrained, safetensors)
with the optimizer state of the latest one in ``work_dir/state.pt``. The
declared outputs are filled only when training ends, by moving the checkpoint
folders out of ``work_dir``; Snakemake never deletes ``work_dir`` before a rerun,
so a killed job resumes.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import io
from .model import check_context, device_of
from .tokens import Examples, pad_batch


@dataclass
class TrainSettings:
    checkpoints: list[int]  # steps to save; training stops at the last
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return max(self.checkpoints)


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


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real (unpadded) targets."""
    logits = model(input_ids=ids).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
    )


def _optimizer(model, s: TrainSettings):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr,
    )


def _save_checkpoint(model, optimizer, step: int, work_dir: Path) -> None:
    with io.atomic_path(work_dir / f"step-{step}") as tmp:
        model.save_pretrained(tmp)
    with io.atomic_path(work_dir / "state.pt") as tmp:
        torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp)


def _resume(model, optimizer, work_dir: Path, load_weights) -> int:
    """Restore the last complete checkpoint in work_dir; the step to start from."""
    state_file = work_dir / "state.pt"
    if not state_file.exists():
        return 0
    state = torch.load(state_file, weights_only=True, map_location=device_of(model))  # tensors and numbers only
    step = int(state["step"])
    load_weights(model, work_dir / f"step-{step}")
    optimizer.load_state_dict(state["optimizer"])
    return step


def _load_weights(model, ckpt_dir: Path) -> None:
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(ckpt_dir / "model.safetensors", device=str(device_of(model))), strict=False)
    # save_pretrained leaves out the tied output matrix; nothing else may be missing.
    if unexpected or any(not k.startswith("lm_head.") for k in missing):
        raise RuntimeError(f"checkpoint {ckpt_dir} does not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()


def train(model, examples: Examples, s: TrainSettings, out_dirs: dict[int, str], work_dir, log=None) -> None:
    """Train `model` on `examples`, writing the checkpoint of each step in out_dirs."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = device_of(model)
    check_context(model, examples, "training examples")
    if sorted(out_dirs) != sorted(set(s.checkpoints)):
        raise ValueError("out_dirs must name one folder per checkpoint step")
    optimizer = _optimizer(model, s)
    start = _resume(model, optimizer, work_dir, _load_weights)
    if start == 0 and not (work_dir / "step-0").exists() and 0 in s.checkpoints:
        _save_checkpoint(model, optimizer, 0, work_dir)
    if start:
        print(f"resuming from step {start} in {work_dir}", file=log, flush=True)

    model.train()
    bar = tqdm(range(start, s.total_steps), initial=start, total=s.total_steps, file=log, mininterval=5, desc="train")
    for step in bar:
        torch.manual_seed(s.seed * 1_000_003 + step)  # this step's dropout noise
        ids, mask = (t.to(device) for t in pad_batch(examples, batch_indices(step, len(examples), s)))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, s)
        loss = lm_loss(model, ids, mask)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step + 1 in s.checkpoints:
            _save_checkpoint(model, optimizer, step + 1, work_dir)
    bar.close()
    model.eval()

    # Publish: move every checkpoint to its declared output, then drop the work dir.
    for step, out in out_dirs.items():
        out = Path(out)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work_dir / f"step-{step}", out)
    shutil.rmtree(work_dir)
