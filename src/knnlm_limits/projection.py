"""Projection (paper Eq. 2): how close can the LM's last layers get to p_knnlm?

    z* = argmin_z KL[ f(z) || p_knnlm ]        (the paper's direction)

solved once w.r.t. f (z starts at g(enc(c)), the model's own input to f) and
once w.r.t. f∘g (z starts at enc(c)); the perplexity of f(z*) (resp. f(g(z*)))
on the true tokens then says whether the softmax bottleneck (f) or the MLP
hurdle (f∘g) keeps the LM from the kNN-LM. Every token is an independent
problem; a whole batch is solved in one tensor, with the loss summed over
tokens so that each row's gradient is its own problem's gradient.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .knnlm import interpolate, knn_log_dist
from .model import device_of, enc, f_logits, g
from .tokens import pad_batch, scored_mask

DIRECTIONS = ("paper", "reverse")  # KL[f(z)||p] and KL[p||f(z)]


def kl_rows(log_q: torch.Tensor, log_p: torch.Tensor, direction: str = "paper") -> torch.Tensor:
    """Row-wise KL[q || p] ("paper") or KL[p || q] ("reverse"), both given as log-probs."""
    if direction == "paper":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    if direction == "reverse":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    raise ValueError(f"KL direction {direction!r} is not one of {DIRECTIONS}")


def project(head, z0: torch.Tensor, target_logp: torch.Tensor, steps: int, lr: float,
            solver: str = "adam", direction: str = "paper"):
    """Minimise KL between softmax(head(z)) and the target, for every row at once.

    Returns z* and the mean KL before each step and after the last (steps + 1 values).
    """
    z = z0.detach().clone().requires_grad_(True)
    target_logp = target_logp.detach()
    if solver == "adam":
        opt = torch.optim.Adam([z], lr=lr)
    elif solver == "sgd":
        opt = torch.optim.SGD([z], lr=lr)
    else:
        raise ValueError(f"projection solver {solver!r} is not 'adam' or 'sgd'")
    trace = []
    for _ in range(steps):
        kl = kl_rows(torch.log_softmax(head(z), -1), target_logp, direction)
        trace.append(kl.mean().item())
        opt.zero_grad(set_to_none=True)
        kl.sum().backward()
        opt.step()
    with torch.no_grad():
        trace.append(kl_rows(torch.log_softmax(head(z), -1), target_logp, direction).mean().item())
    return z.detach(), np.asarray(trace)


def target_logprob(head, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(head(z), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _first_positions(examples, n_tokens: int):
    """The smallest prefix of examples holding n_tokens scored positions."""
    per_example = np.maximum(examples.lengths() - examples.score_start, 0)
    n_ex = int(np.searchsorted(np.cumsum(per_example), n_tokens) + 1)
    return list(range(min(n_ex, len(examples))))


def run(lm, examples, found: dict, lam: float, temperature: float, settings: dict, log=None):
    """Project p_knnlm of the first `settings['tokens']` scored test tokens.

    Returns (per-token DataFrame of log-probs of the true token under the LM, the
    kNN-LM and both projections; DataFrame of the mean-KL traces).
    """
    lm.eval()
    idx = _first_positions(examples, settings["tokens"])
    ids, _ = pad_batch(examples, idx)
    mask = scored_mask(examples, idx, ids.size(1))
    device = device_of(lm)
    with torch.no_grad():
        h_all = enc(lm, ids.to(device))[:, :-1][mask.to(device)]
    n = min(settings["tokens"], h_all.size(0))
    h_all, targets = h_all[:n], ids[:, 1:][mask][:n]
    if not torch.equal(targets, torch.as_tensor(found["targets"][:n]).long()):
        raise RuntimeError("projection tokens do not line up with the kNN search results")

    head_f = lambda z: f_logits(lm, z)  # noqa: E731
    head_fg = lambda z: f_logits(lm, g(lm, z))  # noqa: E731
    for p in lm.parameters():
        p.requires_grad_(False)

    rows, traces = {k: [] for k in ("lm", "knnlm", "proj_f", "proj_fg")}, {"f": [], "f∘g": []}
    vocab = lm.config.vocab_size
    for start in tqdm(range(0, n, settings["batch"]), file=log, desc="projection"):
        sl = slice(start, min(start + settings["batch"], n))
        h, y = h_all[sl], targets[sl].to(device)
        with torch.no_grad():
            z0 = g(lm, h)
            log_lm = torch.log_softmax(f_logits(lm, z0), -1)
            log_knn = knn_log_dist(found["dists"][sl], found["nbr_values"][sl], temperature, vocab).to(device)
            target = interpolate(log_lm, log_knn, lam)
        kwargs = dict(steps=settings["steps"], lr=settings["lr"], solver=settings["solver"], direction=settings["direction"])
        z_f, tr_f = project(head_f, z0, target, **kwargs)
        z_fg, tr_fg = project(head_fg, h, target, **kwargs)
        rows["lm"].append(log_lm.gather(-1, y[:, None]).squeeze(-1))
        rows["knnlm"].append(target.gather(-1, y[:, None]).squeeze(-1))
        rows["proj_f"].append(target_logprob(head_f, z_f, y))
        rows["proj_fg"].append(target_logprob(head_fg, z_fg, y))
        weight = sl.stop - sl.start
        traces["f"].append(tr_f * weight)
        traces["f∘g"].append(tr_fg * weight)

    per_token = pd.DataFrame({k: torch.cat(v).double().cpu().numpy() for k, v in rows.items()})
    per_token.insert(0, "target", targets.numpy())
    trace_rows = [
        {"target": name, "iteration": i, "mean_kl": v}
        for name, parts in traces.items()
        for i, v in enumerate(np.sum(parts, axis=0) / n)
    ]
    return per_token, pd.DataFrame(trace_rows)
