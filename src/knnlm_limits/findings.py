"""Findings: each claim of the paper, measured with a 95% interval and a rule for `holds`.

One row per claim (and per scale point, per number of children where the claim
is read per n), with the columns of ``COLUMNS``. The rules:

- Table 1 claims, over test tokens (paired bootstrap):
  knnlm_beats_lm                 ppl_lm - ppl_knnlm on the whole evaluated test set; holds if the CI is above 0
  softmax_bottleneck_ruled_out   gap_f = (ppl_proj_f - ppl_knnlm) / (ppl_lm - ppl_knnlm); holds if the CI is
                                 below 0.5 (f's projection is nearer the kNN-LM than the LM). Paper: -0.07
  softmax_bottleneck_ruled_out_convex
                                 the same gap for the convex reverse-KL optimum of f (L-BFGS): what f can express
  mlp_hurdle_in_projection       gap_fg, the same with f∘g; holds if the CI is above 0.5. Paper: 0.99
- Where retrieval helps, over test tokens (bootstrap):
  knn_gain_concentrated_in_rare_tokens  mean gain log p_knnlm - log p_lm on targets seen 1-99 times in the
                                 training split minus that on targets seen >= 1,000 times; holds if the CI is above 0
  approximate_search_lowers_perplexity  (only where a corpus datastore is searched through an approximate index)
                                 kNN-LM perplexity with its neighbours minus with the exact ones, on knn.fidelity_queries
                                 sampled test queries (paired bootstrap); holds if the CI is below 0 (Xu et al. 2023)
- The parametric memory (memory.py), over test tokens (paired bootstrap), the memory at its validation-tuned lambda_m
  unless said otherwise:
  memory_recovers_knn_gain       (ppl_lm - ppl_lm+memory) / (ppl_lm - ppl_knnlm), both at their fixed interpolation
                                 (knn.lambda, T) and both at their validation-tuned one; holds if the CI is above 0.
                                 Measured only where the kNN-LM's gain ppl_lm - ppl_knnlm at that setting has its CI
                                 above 0 (else unmeasured: no gain to recover). Paper: 0.45
  memory_beats_more_training     ppl of the LM trained further for the memory's compute (its training and its kNN
                                 targets' search) minus ppl_lm+memory; holds if the CI is above 0 (the memory gives
                                 more than training longer would)
  memory_alone_beats_lm          ppl_lm - ppl_memory: the memory alone better than the LM is partly a better-trained
                                 LM, not retrieval; holds if the CI is above 0 (a control, read with the others)
  memory_imitation_helps         ppl_lm+memory at alpha 0 minus at memory.alpha (the same training; the criterion states
                                 the imitating memory's extra compute, its kNN targets' search); holds if the CI is above 0
  memory_smaller_than_datastore  datastore bytes (keys, values, index) / the memory's bytes (float32, its head
                                 counted unless it is the LM's own); exact, holds if above 1. Paper: over 25
- Figure 1 claims, over seeds (t interval):
  no_last_mlp_learns_faster_early  no-last-MLP minus full LM child log-likelihood, averaged over the early
                                   checkpoints (0 < step <= early_fraction x last step); holds if the CI is above 0
  knn_high_from_random_encoder     kNN-LM minus LM at step 0; holds if the CI is above 0
- Figure 2 claims at the last checkpoint, overall and per number of children n, over seeds:
  overspecification_gap          log(1/n) - LM log-likelihood; holds if the CI is above 0
  knn_helps_overspecification    kNN-LM minus LM log-likelihood; holds if the CI is above 0
  memory_helps_overspecification LM + memory (of the run's v2 datastore) minus LM log-likelihood; holds if the CI is
                                 above 0
- Figure 3, over prompts (bootstrap):
  scaling_does_not_fix_overspecification  n x p(child), the fraction of the perfect likelihood 1/n reached;
                                          holds if the CI is below 0.5
A claim whose interval cannot be computed (one seed), or that is not defined at a scale point (no kNN-LM gain to
recover), does not hold: it is unmeasured, its note says why.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .stats import bootstrap_ci, t_interval

SCALE_COLUMNS = ["model", "architecture", "n_layer", "n_embd", "vocab_size", "step", "train_tokens", "key"]
# setting: the interpolation a corpus claim reads, "fixed" (knn.lambda, T; a memory at knn.lambda)
# or "tuned" (validation-tuned, a memory's lambda_m too); empty where it reads none (the memory
# alone, bytes) and for Figures 1-3's claims
COLUMNS = ["finding", "paper", "measured", "ci_low", "ci_high", "criterion", "holds", "ci_over", "n_children",
           "setting", "note", *SCALE_COLUMNS]
FIXED, TUNED = "fixed", "tuned"


# the Macondo claims read off a kNN-LM or its memory (whose key is knn.keys[0])
MACONDO_KNN_FINDINGS = ("knn_high_from_random_encoder", "knn_helps_overspecification", "memory_helps_overspecification")


def _row(finding, paper, estimate, criterion, holds_rule, ci_over, scale, n_children="all", note="", setting=""):
    measured, low, high = estimate
    holds = bool(holds_rule(low, high)) if not (math.isnan(low) or math.isnan(high)) else False
    return {"finding": finding, "paper": paper, "measured": measured, "ci_low": low, "ci_high": high,
            "criterion": criterion, "holds": holds, "ci_over": ci_over, "n_children": n_children, "setting": setting,
            "note": note, **{k: scale.get(k) for k in SCALE_COLUMNS}}


def _above(threshold):
    return lambda low, high: low > threshold


def _below(threshold):
    return lambda low, high: high < threshold


def _gap(means: np.ndarray) -> np.ndarray:
    """(ppl_proj - ppl_knnlm) / (ppl_lm - ppl_knnlm) from mean log-probs [lm, knnlm, proj]."""
    ppl = np.exp(-means)
    return (ppl[..., 2] - ppl[..., 1]) / (ppl[..., 0] - ppl[..., 1])


def _ppl_difference(means: np.ndarray) -> np.ndarray:
    """ppl of column 0 minus ppl of column 1, from their mean log-probs."""
    return np.exp(-means[..., 0]) - np.exp(-means[..., 1])


def table1(per_token: pd.DataFrame, test_lm: np.ndarray, test_knnlm: np.ndarray, summary: pd.DataFrame,
           scale: dict, setting: str, n_resamples: int, seed: int) -> list[dict]:
    """Table 1's claims at one scale point, the kNN-LM interpolated at `setting` (FIXED or TUNED:
    table1.projection.interpolation)."""
    tokens = f"{len(per_token)} test tokens"
    diff = bootstrap_ci(np.column_stack([test_lm, test_knnlm]), _ppl_difference, n_resamples, seed)
    rows = [_row("knnlm_beats_lm", "20.13 - 16.92 = 3.21 (kNN-LM lower)", diff,
                 "ppl_lm - ppl_knnlm on the whole evaluated test set; holds if its 95% CI is above 0",
                 _above(0), f"{len(test_lm)} test tokens", scale, setting=setting)]
    solver = summary.set_index("column")
    claims = [
        ("softmax_bottleneck_ruled_out", "proj_f", "(16.70 - 16.92) / (20.13 - 16.92) = -0.07",
         "gap_f = (ppl_proj_f - ppl_knnlm) / (ppl_lm - ppl_knnlm); holds if its 95% CI is below 0.5", _below(0.5)),
        ("softmax_bottleneck_ruled_out_convex", "proj_f_reverse", "not in the paper",
         "gap of f's convex optimum of KL[p_knnlm || f(z)]; holds if its 95% CI is below 0.5", _below(0.5)),
        ("mlp_hurdle_in_projection", "proj_fg", "(20.11 - 16.92) / (20.13 - 16.92) = 0.99",
         "gap_fg = (ppl_proj_fg - ppl_knnlm) / (ppl_lm - ppl_knnlm); holds if its 95% CI is above 0.5", _above(0.5)),
    ]
    for finding, column, paper, criterion, rule in claims:
        gap = bootstrap_ci(per_token[["lm", "knnlm", column]].to_numpy(), _gap, n_resamples, seed)
        s = solver.loc[column]
        note = (f"{s['projection']}: {s['direction']} KL, {s['solver']}, {s['iterations']} iterations, "
                f"final mean KL {s['final_mean_kl']:.4g}, {'converged' if s['converged'] else 'NOT converged'}")
        rows.append(_row(finding, paper, gap, criterion, rule, tokens, scale, note=note, setting=setting))
    return rows


def knn_gains(estimate, n_tokens: int, scale: dict) -> list[dict]:
    """The rare-token reading of the kNN-LM's gain (Khandelwal et al. 2020) at one scale point
    (the kNN-LM at knn.lambda, T)."""
    return [_row("knn_gain_concentrated_in_rare_tokens", "rare patterns gain most (Khandelwal et al. 2020)", estimate,
                 "mean log-prob gain on targets seen 1-99 times in training minus on targets seen >= 1,000 times; "
                 "holds if its 95% CI is above 0", _above(0), f"{n_tokens} test tokens", scale, setting=FIXED)]


def search_fidelity(estimate, table: pd.DataFrame, scale: dict) -> list[dict]:
    """Approximate against exact neighbours at one scale point (the kNN-LM at knn.lambda, T); no
    row where the search was exact."""
    if not len(table):
        return []
    return [_row("approximate_search_lowers_perplexity", "lower with approximate neighbours (Xu et al. 2023)",
                 estimate, "kNN-LM perplexity with the approximate index's neighbours minus with the exact ones on "
                 "sampled test queries; holds if its 95% CI is below 0", _below(0), f"{len(table)} test queries",
                 scale, note=f"recall@k {table.recall_at_k.mean():.3f}", setting=FIXED)]


def datastore_growth(estimate, table: pd.DataFrame, n_tokens: int, scale: dict) -> list[dict]:
    """The datastore-size curve's claim at one scale point (datastore_scaling.gain_slope):
    unmeasured with fewer than two sizes."""
    sizes = ", ".join(f"{int(r.shards)}/{int(r.of_shards)} shards {int(r.entries):,}" for r in table.itertuples())
    if len(table) < 2:
        estimate = (estimate[0], math.nan, math.nan)
    return [_row("knn_gain_grows_with_datastore", "grows log-linearly up to 3B tokens (Khandelwal et al. 2020)",
                 estimate, "least-squares slope of ppl_lm - ppl_knnlm (validation-tuned lambda, T at each size) "
                 "against log2 of the datastore's entries, over the first s shards; holds if its 95% CI is above 0",
                 _above(0), f"{n_tokens} test tokens", scale,
                 note=f"perplexity per doubling; sizes: {sizes}" if len(table) >= 2 else
                 f"not measured: one datastore size ({sizes}); set knn.shards above 1")]


def _recovered(means: np.ndarray) -> np.ndarray:
    """(ppl_lm - ppl_mix) / (ppl_lm - ppl_knnlm) from mean log-probs [lm, mix, knnlm]."""
    ppl = np.exp(-means)
    return (ppl[..., 0] - ppl[..., 1]) / (ppl[..., 0] - ppl[..., 2])


def memory(tokens: pd.DataFrame, table: pd.DataFrame, main: str, control: str | None, head: str, scale: dict,
           n_resamples: int, seed: int) -> list[dict]:
    """The parametric memory's claims at one kNN-LM point (memory.tables' per-token columns)."""
    over, mix = f"{len(tokens)} test tokens", f"lm_memory_{main}"

    def paired(columns, statistic):
        return bootstrap_ci(tokens[columns].to_numpy(), statistic, n_resamples, seed)

    rows = []
    for setting, memory_column, lam in ((FIXED, f"{mix}_fixed", "knn.lambda"), (TUNED, mix, "lambda_m")):
        claim = {"finding": "memory_recovers_knn_gain", "paper": "(20.13 - 18.68) / (20.13 - 16.92) = 0.45",
                 "criterion": "(ppl_lm - ppl_lm+memory) / (ppl_lm - ppl_knnlm), both interpolated at their fixed or "
                              "both at their validation-tuned setting, measured only where the kNN-LM's gain ppl_lm - "
                              "ppl_knnlm there has its 95% CI above 0; holds if its 95% CI is above 0",
                 "holds_rule": _above(0), "scale": scale, "setting": setting}
        note = f"memory {main}: the memory at its {lam}, the kNN-LM at its {setting} (lambda, T)"
        # a ratio over a gain that may be none: where the kNN-LM is no better than the LM, a
        # memory as much worse would "recover" a positive share of it
        gain = paired(["lm", f"knnlm_{setting}"], _ppl_difference)
        if gain[1] > 0:
            rows.append(_row(**claim, estimate=paired(["lm", memory_column, f"knnlm_{setting}"], _recovered),
                             ci_over=over, note=note))
        else:
            rows.append(_row(**claim, estimate=(math.nan, math.nan, math.nan), ci_over="unmeasured",
                             note=f"{note}; not measured: no gain to recover, the kNN-LM's ppl_lm - ppl_knnlm is "
                                  f"{gain[0]:.4g} [{gain[1]:.4g}, {gain[2]:.4g}] ({over})"))
    memory_row = table[(table.kind == "memory") & (table.component == f"LM + memory {main}")].iloc[0]
    trained, searched = memory_row["train_flops"], memory_row["target_search_flops"]
    if "lm_more" in tokens:
        more = table[table.kind == "more_training"].iloc[0]
        rows.append(_row("memory_beats_more_training", "not in the paper", paired(["lm_more", mix], _ppl_difference),
                         "ppl of the LM trained further for the memory's compute (its training and its kNN targets' "
                         "search) minus ppl_lm+memory; holds if its 95% CI is above 0", _above(0), over, scale,
                         note=f"memory {main}; the LM trained {int(more['extra_steps'])} steps further on the same "
                              f"data, {more['train_flops']:.3g} FLOPs for the memory's {trained:.3g} of training and "
                              f"{searched:.3g} of kNN-target search", setting=TUNED))
    rows.append(_row("memory_alone_beats_lm", "not in the paper", paired(["lm", f"memory_{main}"], _ppl_difference),
                     "ppl_lm - ppl_memory (the memory alone, no LM); holds if its 95% CI is above 0: then the memory "
                     "is partly a better-trained LM, not retrieval", _above(0), over, scale, note=f"memory {main}"))
    if control is not None:
        rows.append(_row("memory_imitation_helps", "not in the paper (MLP Memory: alpha 0.4 best)",
                         paired([f"lm_memory_{control}", mix], _ppl_difference),
                         f"ppl_lm+memory trained on values alone (alpha 0) minus trained to imitate p_kNN, the same "
                         f"training ({trained:.3g} FLOPs); the imitating memory also spends its kNN targets' search, "
                         f"{searched:.3g} FLOPs more ({searched / trained:.0%} of its training), which the values "
                         f"memory does not; holds if its 95% CI is above 0", _above(0), over, scale,
                         note=f"memory {main} against {control}", setting=TUNED))
    datastore_bytes = int(table.loc[table.kind == "knn", "bytes"].iloc[0])
    ratio = datastore_bytes / memory_row["bytes"]
    counted = "the LM's own head not counted" if head == "lm_frozen" else "its head counted"
    rows.append(_row("memory_smaller_than_datastore", "over 25x (NAACL 2024)", (ratio, ratio, ratio),
                     "bytes of the datastore (keys, values, index) / bytes of the memory (float32); exact; holds if "
                     "above 1", _above(1), "bytes", scale,
                     note=f"{datastore_bytes:,} / {int(memory_row['bytes']):,} bytes, memory {main}, {counted}"))
    return rows


def _per_seed(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean child log-likelihood per seed (and `by`)."""
    return table.groupby(["seed", *by], as_index=False)["loglik"].mean()


def figure1(children: pd.DataFrame, scale: dict, early_fraction: float) -> list[dict]:
    """Figure 1's claims for one memorization shape."""
    rows = []
    steps = sorted(children.step.unique())
    early = [s for s in steps if 0 < s <= early_fraction * max(steps)]
    lm = _per_seed(children[children.method == "lm"], ["variant", "step"])
    claim = {"finding": "no_last_mlp_learns_faster_early", "paper": "higher during the first 4,000 of 10,000 steps",
             "criterion": "no-last-MLP minus full LM mean child log-likelihood over the early checkpoints; "
                          "holds if its 95% CI is above 0", "holds_rule": _above(0), "scale": scale}
    if {"full", "no_last_mlp"} <= set(lm.variant) and early:
        wide = lm[lm.step.isin(early)].pivot_table(index="seed", columns="variant", values="loglik", aggfunc="mean")
        diff = (wide["no_last_mlp"] - wide["full"]).dropna()
        rows.append(_row(**claim, estimate=t_interval(diff), ci_over=f"{len(diff)} seeds",
                         note=f"early checkpoints: steps {', '.join(map(str, early))} (<= {early_fraction:g} x {max(steps)})"))
    else:
        why = ("needs both variants, full and no_last_mlp" if early else
               f"no checkpoint in (0, {early_fraction:g} x {max(steps)}]: add early memorization.train.checkpoints")
        rows.append(_row(**claim, estimate=(math.nan, math.nan, math.nan), ci_over="unmeasured", note=why))
    at_zero = children[(children.step == 0) & children.method.isin(["lm", "knnlm"])]
    claim = {"finding": "knn_high_from_random_encoder", "paper": "kNN-LM high from step 0 (random enc)",
             "criterion": "kNN-LM minus LM mean child log-likelihood at step 0; holds if its 95% CI is above 0",
             "holds_rule": _above(0), "scale": scale}
    variants = sorted(set(at_zero[at_zero.method == "knnlm"].variant))
    for variant in variants:
        wide = _per_seed(at_zero[at_zero.variant == variant], ["method"]).pivot(index="seed", columns="method", values="loglik")
        rows.append(_row(**claim, estimate=t_interval(wide["knnlm"] - wide["lm"]), ci_over=f"{len(wide)} seeds",
                         note=f"encoder of the {variant} model"))
    if not variants:
        rows.append(_row(**claim, estimate=(math.nan, math.nan, math.nan), ci_over="unmeasured",
                         note="needs step 0 among memorization.train.checkpoints and a variant in knn_variants"))
    return rows


def figure2(children: pd.DataFrame, scale: dict) -> list[dict]:
    """Figure 2's claims at the last checkpoint, overall and per number of children."""
    last = children[children.step == children.step.max()]
    rows = []
    for n in ["all", *sorted(last.n_children.unique())]:
        part = last if n == "all" else last[last.n_children == n]
        perfect = np.log(1.0 / part.n_children)  # per child: log(1/n) of its parent
        gap = part.assign(loglik=perfect - part.loglik)
        per_seed = _per_seed(gap[gap.method == "lm"], [])
        rows.append(_row(
            "overspecification_gap", "LM far below log(1/n)", t_interval(per_seed.loglik),
            "log(1/n) minus the LM's child log-likelihood on v1 prompts after fine-tuning on v2; "
            "holds if its 95% CI is above 0", _above(0), f"{len(per_seed)} seeds", scale, n_children=str(n),
            note=f"step {int(last.step.max())}"))
        wide = _per_seed(part[part.method.isin(["lm", "knnlm", "lm_memory"])], ["method"]).pivot(
            index="seed", columns="method", values="loglik")
        rows.append(_row(
            "knn_helps_overspecification", "kNN-LM above the LM", t_interval(wide["knnlm"] - wide["lm"]),
            "kNN-LM minus LM child log-likelihood on v1 prompts; holds if its 95% CI is above 0",
            _above(0), f"{len(wide)} seeds", scale, n_children=str(n), note=f"step {int(last.step.max())}"))
        if "lm_memory" in wide:
            rows.append(_row(
                "memory_helps_overspecification", "not in the paper (does a memory generalise as retrieval does?)",
                t_interval(wide["lm_memory"] - wide["lm"]),
                "LM + memory (of the run's v2 datastore) minus LM child log-likelihood on v1 prompts; holds if its "
                "95% CI is above 0", _above(0), f"{len(wide)} seeds", scale, n_children=str(n),
                note=f"step {int(last.step.max())}"))
    return rows


def figure3(children: pd.DataFrame, scale: dict, n_resamples: int, seed: int) -> list[dict]:
    """Figure 3's claim: the fine-tuned chat model's likelihood against the perfect 1/n."""
    lm = children[children.method == "lm"]
    rows = []
    for n in ["all", *sorted(lm.n_children.unique())]:
        part = lm if n == "all" else lm[lm.n_children == n]
        fraction = np.exp(part.loglik.to_numpy()) * part.n_children.to_numpy()
        rows.append(_row(
            "scaling_does_not_fix_overspecification", "GPT-3.5-turbo far from 1/n",
            bootstrap_ci(fraction[:, None], lambda m: m[..., 0], n_resamples, seed),
            "n x p(child): the fraction of the perfect likelihood 1/n reached; holds if its 95% CI is below 0.5",
            _below(0.5), f"{len(part)} prompts", scale, n_children=str(n)))
    return rows


def scale_of(model_dir, point: dict) -> dict:
    """A scale point's columns: `point` (model, step, train_tokens) and its model's shape."""
    import json
    from pathlib import Path

    spec = json.loads((Path(model_dir) / "config.json").read_text())
    return {**point, "architecture": spec.get("model_type"),
            "n_layer": spec.get("num_hidden_layers") or spec.get("n_layer"),
            "n_embd": spec.get("hidden_size") or spec.get("n_embd"), "vocab_size": spec.get("vocab_size")}


def to_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(frame: pd.DataFrame) -> str:
    """The findings as a Markdown table a reader can scan."""
    lines = ["| finding | scale | n | paper | measured [95% CI] | holds | criterion |", "|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        scale = f"{r.model} step {int(r.step)}" if pd.notna(r.step) else str(r.model)
        scale += f", key {r.key}" if isinstance(r.key, str) and r.key else ""
        ci = "n/a" if pd.isna(r.ci_low) else f"[{r.ci_low:.3g}, {r.ci_high:.3g}]"
        note = f" ({r.note})" if isinstance(r.note, str) and r.note else ""
        lines.append(f"| {r.finding} | {scale} | {r.n_children} | {r.paper} | {r.measured:.3g} {ci} | "
                     f"{'yes' if r.holds else 'no'} | {r.criterion}{note} |")
    return "\n".join(lines) + "\n"


BY_SCALE = ("knnlm_beats_lm", "softmax_bottleneck_ruled_out", "softmax_bottleneck_ruled_out_convex",
            "mlp_hurdle_in_projection", "no_last_mlp_learns_faster_early", "knn_high_from_random_encoder",
            "knn_gain_concentrated_in_rare_tokens", "memory_recovers_knn_gain", "memory_alone_beats_lm",
            "memory_beats_more_training")


def by_scale(frame: pd.DataFrame) -> pd.DataFrame:
    """The scale-dependent claims (Table 1, Figure 1), one row per claim and scale point."""
    part = frame[frame.finding.isin(BY_SCALE)]
    return part.sort_values(["finding", "key", "architecture", "n_layer", "n_embd", "step"], na_position="last",
                            kind="stable").reset_index(drop=True)
