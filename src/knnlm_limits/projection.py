"""Projection (paper Eq. 2): how close can the LM's last layers get to p_knnlm?

    z* = argmin_z KL[ f(z) || p_knnlm ]        (the paper's direction)

solved once w.r.t. f (z starts at g(enc(c)), the model's own input to f) and
once w.r.t. f∘g (z starts at enc(c)); the perplexity of f(z*) (resp. f(g(z*)))
on the true tokens then says whether the softmax bottleneck (f) or the MLP
hurdle (f∘g) keeps the LM from the kNN-LM.

The paper's direction is not convex in z, so a gap could be an unfinished
optimisation. In the reverse direction, KL[p_knnlm || f(z)] =
logsumexp(Wz) - p·Wz + const is convex in z: its optimum, reached with L-BFGS
and certified by a vanishing gradient W^T(f(z) - p), bounds what f can
express. It is solved beside the paper's direction and reported with it.

Every token is an independent problem; a whole batch is solved in one tensor,
with the loss summed over tokens so that each row's gradient is its own
problem's gradient (Adam and SGD then take exactly each row's own steps; L-BFGS
couples the rows through its line search and history, and reaches each row's
own optimum on the convex problem).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .knnlm import SearchResults, interpolate, knn_distribution, sample_rows, target_columns
from .model import device_of, enc, f_logits, g
from .tokens import batches_by_tokens, pad_batch

DIRECTIONS = ("paper", "reverse")  # KL[f(z)||p] and KL[p||f(z)]
CONVERGENCE_WINDOW = 10  # iterations over which the relative change of the mean KL is judged


def kl_rows(log_q: torch.Tensor, log_p: torch.Tensor, direction: str = "paper") -> torch.Tensor:
    """Row-wise KL[q || p] ("paper") or KL[p || q] ("reverse"), both given as log-probs."""
    if direction == "paper":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if direction == "reverse":
        p = log_p.exp()
        return (p * (log_p - log_q)).masked_fill(p == 0, 0.0).sum(-1)
    raise ValueError(f"KL direction {direction!r} is not one of {DIRECTIONS}")


class SoftmaxKL(torch.autograd.Function):
    """kl_rows(log_softmax(logits), target_logp, direction), with the gradient w.r.t. the
    logits in closed form (q = softmax(logits), p the target):

        paper    KL[q || p]:  dKL/dlogits = q * (log q - log p - KL)
        reverse  KL[p || q]:  dKL/dlogits = q - p

    Autograd through log_softmax, exp and the product makes about twice as many
    passes over the (N, V) tensors, and the projection does little else.
    """

    @staticmethod
    def forward(ctx, logits, target_logp, direction):
        log_q = torch.log_softmax(logits, -1)
        q = log_q.exp()
        if direction == "paper":
            diff = log_q.sub_(target_logp)  # log q - log p
            kl = (q * diff).sum(-1)
            grad = q.mul_(diff.sub_(kl.unsqueeze(-1)))
        elif direction == "reverse":
            p = target_logp.exp()
            kl = (p * (target_logp - log_q)).masked_fill(p == 0, 0.0).sum(-1)
            grad = q.sub_(p)
        else:
            raise ValueError(f"KL direction {direction!r} is not one of {DIRECTIONS}")
        ctx.save_for_backward(grad)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        (grad,) = ctx.saved_tensors
        return grad * grad_kl.unsqueeze(-1), None, None


def project(head, z0: torch.Tensor, target_logp: torch.Tensor, steps: int, lr: float,
            solver: str = "adam", direction: str = "paper"):
    """Minimise KL between softmax(head(z)) and the target, for every row at once.

    Solvers: adam and sgd take `steps` steps of size `lr`; lbfgs makes at most `steps`
    evaluations after the first (strong Wolfe line search; `lr` unused) and may stop
    earlier at its tolerances. Returns z* and the mean KL before each iteration and
    after the last (for lbfgs: the best after each function evaluation).
    """
    z = z0.detach().clone().requires_grad_(True)
    target_logp = target_logp.detach()

    def mean_kl():
        with torch.no_grad():
            return kl_rows(torch.log_softmax(head(z), -1), target_logp, direction).mean().item()

    if solver == "lbfgs":
        # One call: PyTorch's L-BFGS stalls when stepped one iteration at a time. The trace
        # is the best mean KL after each function evaluation (line searches included),
        # held at its last value once the solver stops at its tolerances.
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=steps, max_eval=steps + 1, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
        trace = []

        def closure():
            opt.zero_grad(set_to_none=True)
            kl = SoftmaxKL.apply(head(z), target_logp, direction)
            trace.append(min(trace[-1], kl.mean().item()) if trace else kl.mean().item())
            kl.sum().backward()
            return kl.sum()

        opt.step(closure)
        return z.detach(), np.asarray(trace)

    if solver == "adam":
        opt = torch.optim.Adam([z], lr=lr)
    elif solver == "sgd":
        opt = torch.optim.SGD([z], lr=lr)
    else:
        raise ValueError(f"projection solver {solver!r} is not 'adam', 'sgd' or 'lbfgs'")
    trace = []
    for _ in range(steps):
        kl = SoftmaxKL.apply(head(z), target_logp, direction)
        trace.append(kl.mean().item())
        opt.zero_grad(set_to_none=True)
        kl.sum().backward()
        opt.step()
    trace.append(mean_kl())
    return z.detach(), np.asarray(trace)


def converged(trace: np.ndarray, tolerance: float, window: int = CONVERGENCE_WINDOW) -> bool:
    """Whether the mean KL changed by less than `tolerance` (relative) over the last `window` iterations."""
    if len(trace) <= window:
        return False
    before, after = trace[-1 - window], trace[-1]
    return bool(abs(before - after) <= tolerance * max(abs(before), 1e-12))


def reverse_kl_gradient_norm(head_weight: torch.Tensor, z: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """Per row, |W^T (f(z) - p)|: zero exactly at the optimum of the convex reverse-KL problem."""
    with torch.no_grad():
        residual = torch.softmax(z @ head_weight.T, -1) - target_logp.exp()
        return (residual @ head_weight).norm(dim=-1)


def target_logprob(head, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(head(z), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def enc_at(lm, examples, found: SearchResults, chosen: np.ndarray, batch_tokens: int = 8192) -> torch.Tensor:
    """h = enc(c) of the contexts of the chosen scored positions (rows of `found`), (n, d)."""
    rows, cols = found.example[chosen], target_columns(examples, found.example)[chosen] - 1  # h at the context's end
    device = device_of(lm)
    out = torch.empty(len(chosen), lm.config.hidden_size, device=device)
    needed = np.unique(rows)
    for idx in batches_by_tokens(_subset(examples, needed), batch_tokens):
        wanted = needed[idx]
        ids, _ = pad_batch(examples, wanted)
        h = enc(lm, ids.to(device))
        for b, e in enumerate(wanted):
            sel = np.flatnonzero(rows == e)
            out[sel] = h[b, torch.as_tensor(cols[sel], device=device)]
            targets = ids[b, torch.as_tensor(cols[sel] + 1)]
            if not torch.equal(targets, torch.as_tensor(found.targets[chosen[sel]]).long()):
                raise RuntimeError("projection tokens do not line up with the kNN search results")
    return out


def _subset(examples, indices):
    """The examples at `indices`, for batching by their sizes."""
    return type(examples)(examples.tokens, examples.starts[indices], examples.sizes[indices], examples.score_start[indices])


# name -> (what z feeds, KL direction, solver): the paper's two projections with the
# configured solver, and the convex reverse-KL projection w.r.t. f with L-BFGS.
def projections(settings: dict) -> dict:
    return {
        "f": ("f", settings["direction"], settings["solver"]),
        "f∘g": ("f∘g", settings["direction"], settings["solver"]),
        "f, reverse KL (L-BFGS)": ("f", "reverse", "lbfgs"),
    }


COLUMNS = {"f": "proj_f", "f∘g": "proj_fg", "f, reverse KL (L-BFGS)": "proj_f_reverse"}


def run(lm, examples, found: SearchResults, lam: float, temperature: float, settings: dict, log=None):
    """Project p_knnlm at `settings['tokens']` test positions sampled uniformly.

    Returns (per-token DataFrame of the true token's log-prob under the LM, the
    kNN-LM and each projection; DataFrame of the mean-KL traces; DataFrame of
    each projection's solver summary: iterations, final mean KL, convergence,
    and for f's reverse-KL problem the optimality certificate).
    """
    lm.eval()
    chosen = sample_rows(len(found), settings["tokens"], settings["seed"])
    h_all = enc_at(lm, examples, found, chosen)
    targets = torch.as_tensor(found.targets[chosen]).long()
    n = len(chosen)

    heads = {"f": lambda z: f_logits(lm, z), "f∘g": lambda z: f_logits(lm, g(lm, z))}
    for p in lm.parameters():
        p.requires_grad_(False)

    plan = projections(settings)
    rows = {k: [] for k in ("lm", "knnlm", *COLUMNS.values())}
    traces = {name: [] for name in plan}  # per batch: (weight, trace)
    certificates = {name: [] for name in plan}  # f's reverse-KL gradient norms
    vocab, device = lm.lm_head.out_features, device_of(lm)
    for start in tqdm(range(0, n, settings["batch"]), file=log, desc="projection"):
        sl = slice(start, min(start + settings["batch"], n))
        h, y = h_all[sl], targets[sl].to(device)
        with torch.no_grad():
            z0 = g(lm, h)
            log_lm = torch.log_softmax(f_logits(lm, z0), -1)
            p_knn = knn_distribution(found.dists[chosen[sl]], found.nbr_values[chosen[sl]], temperature, vocab)
            with np.errstate(divide="ignore"):
                log_knn = torch.from_numpy(np.log(p_knn)).to(device=device, dtype=log_lm.dtype)
            target = interpolate(log_lm, log_knn, lam)
        rows["lm"].append(log_lm.gather(-1, y[:, None]).squeeze(-1))
        rows["knnlm"].append(target.gather(-1, y[:, None]).squeeze(-1))
        for name, (feeds, direction, solver) in plan.items():
            steps = settings["lbfgs_steps"] if solver == "lbfgs" else settings["steps"]
            z_start = z0 if feeds == "f" else h
            z_star, trace = project(heads[feeds], z_start, target, steps, settings["lr"], solver, direction)
            rows[COLUMNS[name]].append(target_logprob(heads[feeds], z_star, y))
            traces[name].append((sl.stop - sl.start, trace))
            if feeds == "f" and direction == "reverse":  # the certificate holds for this problem only
                certificates[name].append(reverse_kl_gradient_norm(lm.lm_head.weight, z_star, target))

    per_token = pd.DataFrame({k: torch.cat(v).double().cpu().numpy() for k, v in rows.items()})
    per_token.insert(0, "position", chosen)
    per_token.insert(1, "target", targets.numpy())
    summary, trace_rows = [], []
    for name, (_, direction, solver) in plan.items():
        length = max(len(trace) for _, trace in traces[name])
        # a solver that stopped early (L-BFGS at its tolerances) holds its last value
        padded = [np.pad(trace, (0, length - len(trace)), mode="edge") for _, trace in traces[name]]
        mean = np.average(padded, axis=0, weights=[w for w, _ in traces[name]])
        trace_rows += [{"target": name, "iteration": i, "mean_kl": v} for i, v in enumerate(mean)]
        grads = torch.cat(certificates[name]) if certificates[name] else None
        summary.append({
            "projection": name, "column": COLUMNS[name], "direction": direction, "solver": solver,
            "iterations": length - 1, "initial_mean_kl": mean[0], "final_mean_kl": mean[-1],
            "converged": all(converged(trace, settings["tolerance"]) for _, trace in traces[name]),
            "max_gradient_norm": float(grads.max()) if grads is not None else float("nan"),
        })
    return per_token, pd.DataFrame(trace_rows), pd.DataFrame(summary)
