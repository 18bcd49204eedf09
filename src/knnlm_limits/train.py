"""Training stage: a lean, resumable training loop for any causal LM on any Examples.

``run`` is the loop itself, for any model with a step -> loss function (the parametric
memory of ``memory_mlp.py`` trains through it too); ``train`` is it for a causal LM.

Determinism and resumption come from one rule: everything step s does (its
batch, its dropout noise, its learning rate) is a function of (seed, s) alone.
Resumable state therefore needs only the weights and the optimizer state.

Layout of ``work_dir`` while a run is in progress:

    step-N/   each checkpoint of ``settings.checkpoints`` reached so far (save_pretrained)
    state/    the latest resumable state: model.safetensors, optimizer.pt, and meta.json
              with the step and the run's fingerprint (settings, seed, examples, initial
              weights), written last: a state whose meta.json reads is complete. Saved
              every ``save_every`` steps and at every checkpoint, always after that
              step's checkpoint folder
    .state.tmp-PID/, .state.old-PID/, .step-N.tmp-PID/, .step-N.old-PID/
              what a kill can leave of a save: a folder is written as a tmp sibling,
              the old one renamed aside, the new one renamed in, the aside one deleted
              (io.replace)

Invariant, at every instant until publishing deletes anything: the newest
complete state this run has saved is in work_dir, as state/ or as a tmp or
aside copy of it (between the two renames), and every checkpoint up to its step
is complete. A rerun takes the newest copy that is complete (meta.json reads,
its files load), has this run's fingerprint and has its checkpoints, renames it
to state/ and deletes the other copies. A kill therefore costs the steps since
the last complete save: ``save_every`` at most, or the gap between checkpoints
without it. A state of another run is discarded, never continued, and so is an
incomplete one; with no usable copy the whole work folder goes (one log line)
and training starts at step 0.

Publishing: the checkpoint folders are *linked* into the declared outputs (each
through a tmp sibling), the work copies stay. Only then is every state's
meta.json deleted, the one instant after which work_dir is garbage, and then
work_dir. Snakemake deletes a killed job's outputs, so a job killed while
linking resumes at the end and only publishes again; one killed while deleting
work_dir starts again at step 0. No order closes that last window from inside
the job: whatever it deletes last, the outputs are gone once Snakemake has
deleted them after a kill.

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
    keep_optimizer: bool = False  # each checkpoint also holds optimizer.pt (training can continue from it)

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


@dataclass
class Start:
    """Where a run that continues another begins: its step and optimizer state (the weights
    are the model's own). The run's steps after it are those the other run would have taken."""

    step: int
    optimizer: dict


OPTIMIZER_FILE = "optimizer.pt"  # beside a checkpoint's weights when its run keeps it (keep_optimizer)


def continued(checkpoint_dir, step: int, device=None):
    """(model, Start) that continue a run from its checkpoint of `step`: the checkpoint's
    weights and optimizer state. A later checkpoint's job continues the earlier one's
    (rules/train.smk), as the more-training control continues the corpus LM."""
    from .model import best_device, load_lm

    device = device or best_device()
    state = Path(checkpoint_dir) / OPTIMIZER_FILE
    if not state.is_file():
        raise FileNotFoundError(f"{state}: the checkpoint keeps no optimizer state to continue its run from (it "
                                "predates train.keep_optimizer): delete it and its later checkpoints, then rerun")
    optimizer = torch.load(state, weights_only=True, map_location=device)  # tensors and numbers only
    taken = {int(v["step"]) for v in optimizer.get("state", {}).values() if "step" in v}
    if taken and taken != {step}:  # AdamW counts its steps: a checkpoint of another step is a wrong input
        raise ValueError(f"{checkpoint_dir}: its optimizer state has taken {sorted(taken)} steps, not {step}")
    return load_lm(str(checkpoint_dir), device=device), Start(step, optimizer)


def fingerprint(model, data, s: TrainSettings, start: Start | None = None) -> str:
    """What a resumable state must have been made from: settings, seed, data (Examples, or
    the arrays that stand for it), initial model and the step it starts from."""
    digest = hashlib.blake2b(digest_size=16)
    how = ("save_every", "keep_optimizer")  # how often and what else is saved, not what is trained
    settings = {k: v for k, v in asdict(s).items() if k not in how}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(type(model).__name__.encode())
    digest.update(model.config.to_json_string(use_diff=True).encode())
    if start is not None:
        digest.update(f"start {start.step}".encode())
    if isinstance(data, Examples):
        data = (data.tokens, data.starts, data.sizes, data.score_start)
    # memoryviews, not tobytes(): hashing the training stream must not copy it
    for array in data:
        array = np.ascontiguousarray(array)
        digest.update(memoryview(array.reshape(-1).view(np.uint8)))
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().view(torch.uint8).numpy()))
    return digest.hexdigest()


def _save_state(model, optimizer, step: int, run_id: str, work_dir: Path) -> None:
    with io.atomic_path(work_dir / "state") as tmp:
        model.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        # written last: its being readable marks the state complete
        (tmp / "meta.json").write_text(json.dumps({"step": step, "fingerprint": run_id}))


def _state_copies(work_dir: Path) -> list[Path]:
    """state/ and the copies of it a kill can leave beside it (aside, tmp)."""
    state = work_dir / "state"
    return [f for f in (state, *io.leftovers(state)) if f.is_dir()]


def _meta(folder: Path) -> dict | None:
    """A state's meta.json; None if missing or half written."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        return meta if isinstance(meta.get("step"), int) and isinstance(meta.get("fingerprint"), str) else None
    except (OSError, ValueError, AttributeError):
        return None


def _checkpoint_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _why_unusable(meta: dict | None, work_dir: Path, run_id: str, s: TrainSettings) -> str | None:
    if meta is None:
        return "incomplete state"
    if meta["fingerprint"] != run_id:
        return "another run's state (settings, seed, data or initial weights differ)"
    if not all(_checkpoint_complete(work_dir / f"step-{c}") for c in s.checkpoints if c <= meta["step"]):
        return "a checkpoint of its steps is missing"
    return None


def _read_state(folder: Path, device) -> tuple[dict, dict] | None:
    """The weights and optimizer state of a state folder; None if a file is missing or torn."""
    from safetensors.torch import load_file

    try:
        weights = load_file(folder / "model.safetensors", device=str(device))
        optim = torch.load(folder / "optimizer.pt", weights_only=True, map_location=device)  # tensors and numbers only
    except Exception:  # whatever the error, the state cannot be continued; retraining is always correct
        return None
    return weights, optim


def _pick_state(work_dir: Path, run_id: str, s: TrainSettings, device):
    """The newest copy of the state this run can continue, as (folder, step, weights, optimizer
    state) or None; and why each unusable copy is not usable, state/ first."""
    why, usable = {}, []
    for folder in _state_copies(work_dir):
        meta = _meta(folder)
        why[folder] = _why_unusable(meta, work_dir, run_id, s)
        if why[folder] is None:
            usable.append((meta["step"], folder))
    chosen = None
    for step, folder in sorted(usable, reverse=True):  # the newest whose files load
        data = _read_state(folder, device)
        if data is not None:
            chosen = (folder, step, *data)
            break
        why[folder] = "incomplete state"
    return chosen, {f: w for f, w in why.items() if w}


def _load_weights(model, weights: dict, source: Path) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # save_pretrained leaves out a tied output matrix; nothing else may be missing.
    if unexpected or any(not k.startswith("lm_head.") for k in missing):
        raise RuntimeError(f"checkpoint {source} does not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()


def _resume(model, optimizer, work_dir: Path, run_id: str, s: TrainSettings, log, start: Start | None = None) -> int:
    """Restore the newest state in work_dir made by this very run; the step to start from
    (with none, `start`'s step and optimizer state, or step 0)."""
    for c in s.checkpoints:  # a kill's debris; a missing checkpoint's aside copy comes back
        io.recover(work_dir / f"step-{c}")
    chosen, why = _pick_state(work_dir, run_id, s, device_of(model))
    state = work_dir / "state"
    if chosen is None:
        if work_dir.exists() and any(work_dir.iterdir()):
            print(f"discarding {work_dir}: {next(iter(why.values()), 'no resumable state')}", file=log, flush=True)
            # a kill midway is harmless: removing files never makes a work_dir resumable
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        if start is None:
            return 0
        optimizer.load_state_dict(start.optimizer)
        return start.step
    folder, step, weights, optim = chosen
    if state in why:
        print(f"discarding {state}: {why[state]}; falling back to its copy of step {step}", file=log, flush=True)
    if folder != state:
        io.replace(folder, state)  # state/ or the chosen copy is there at every instant
    for stale in io.leftovers(state):
        io.remove(stale)
    _load_weights(model, weights, state)
    optimizer.load_state_dict(optim)
    print(f"resuming from step {step} in {work_dir}", file=log, flush=True)
    return step


def _link_tree(src: Path, dst: Path) -> None:
    """dst gets src's files as hard links (copies across file systems); src stays."""
    io.recover(dst)  # the debris of a killed publish
    with io.atomic_path(dst) as tmp:
        tmp.mkdir()
        for item in src.iterdir():
            try:
                os.link(item, tmp / item.name)
            except OSError:
                shutil.copy2(item, tmp / item.name)


def _publish(work_dir: Path, out_dirs: dict[int, str]) -> None:
    for step, out in out_dirs.items():
        _link_tree(work_dir / f"step-{step}", Path(out))
    # The outputs are complete and work_dir is garbage from here on. Every state loses its
    # completion marker first, so a half-removed work_dir (checkpoints too) is never resumed.
    for folder in _state_copies(work_dir):
        (folder / "meta.json").unlink(missing_ok=True)
    shutil.rmtree(work_dir)


def train(model, examples: Examples, s: TrainSettings, out_dirs: dict[int, str], work_dir, log=None,
          start: Start | None = None) -> None:
    """Train `model` on `examples`, writing the checkpoint of each step in out_dirs."""
    check_context(model, examples, "training examples")

    def loss_at(step: int) -> torch.Tensor:
        idx = batch_indices(step, len(examples), s)
        ids, _ = pad_batch(examples, idx)
        scored = scored_mask(examples, idx, ids.size(1))
        device = device_of(model)
        return lm_loss(model, ids.to(device), scored.to(device))

    run(model, s, out_dirs, work_dir, loss_at, examples, log, start)


def _save_checkpoint(model, optimizer, folder: Path, s: TrainSettings) -> None:
    with io.atomic_path(folder) as tmp:
        model.save_pretrained(tmp)
        if s.keep_optimizer:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)


def autocast_for(device: torch.device):
    """bf16 autocast on a GPU; on a CPU, float32 as is."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def take_step(model, optimizer, s: TrainSettings, step: int, loss_at, autocast) -> float:
    """Training step `step`: its seed and learning rate, loss_at(step) backpropagated, the
    gradient clipped and AdamW applied. The step's loss."""
    torch.manual_seed(s.seed * 1_000_003 + step)  # this step's dropout noise
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, s)
    with autocast:
        loss = loss_at(step)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss is {value} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
    optimizer.step()
    return value


def run(model, s: TrainSettings, out_dirs: dict[int, str], work_dir, loss_at, data, log=None,
        start: Start | None = None, desc: str = "train") -> None:
    """The resumable loop: step by step, loss_at(step) backpropagated and AdamW applied, the
    checkpoint of each step in out_dirs written. `data` (Examples, or arrays that stand for
    the data) goes into the run's fingerprint; loss_at must be a function of the step alone."""
    work_dir = Path(work_dir)
    if sorted(out_dirs) != sorted(set(s.checkpoints)):
        raise ValueError("out_dirs must name one folder per checkpoint step")
    model.float()  # float32 master weights, whatever the checkpoint's dtype
    device = device_of(model)
    run_id = fingerprint(model, data, s, start)
    optimizer = _optimizer(model, s)
    first = _resume(model, optimizer, work_dir, run_id, s, log, start)
    begin = start.step if start is not None else 0
    if first == begin and begin in s.checkpoints:
        _save_checkpoint(model, optimizer, work_dir / f"step-{begin}", s)

    model.train()
    autocast = autocast_for(device)
    bar = tqdm(range(first, s.total_steps), initial=first, total=s.total_steps, file=log, mininterval=5, desc=desc)
    for step in bar:
        loss = take_step(model, optimizer, s, step, loss_at, autocast)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        done = step + 1
        if done in s.checkpoints:
            _save_checkpoint(model, optimizer, work_dir / f"step-{done}", s)
        if s.saves_state_after(done) and done < s.total_steps:
            _save_state(model, optimizer, done, run_id, work_dir)
    bar.close()
    model.eval()
    # The finished run is a state too: a job killed while publishing resumes here.
    if first < s.total_steps:
        _save_state(model, optimizer, s.total_steps, run_id, work_dir)
    _publish(work_dir, out_dirs)
