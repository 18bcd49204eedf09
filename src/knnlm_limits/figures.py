"""Figures and tables: every plotted number is also returned as a DataFrame (CSV)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LABELS = {
    ("full", "lm"): "LM",
    ("no_last_mlp", "lm"): "LM without last MLP",
    ("full", "knnlm"): "kNN-LM",
    ("no_last_mlp", "knnlm"): "kNN-LM (no-MLP encoder)",
}


def seed_summary(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over children per seed, then mean and std over seeds."""
    per_seed = table.groupby(by + ["seed"], as_index=False)["loglik"].mean()
    out = per_seed.groupby(by, as_index=False)["loglik"].agg(mean="mean", std="std", n_seeds="count")
    out["std"] = out["std"].fillna(0.0)
    return out


def figure1(table: pd.DataFrame):
    """Mean child log-likelihood against step: LM with and without the last MLP, kNN-LM."""
    summary = seed_summary(table[table.method.isin(["lm", "knnlm"])], ["variant", "method", "step"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"lm": "-", "knnlm": ":"}
    for (variant, method), rows in summary.groupby(["variant", "method"]):
        rows = rows.sort_values("step")
        line, = ax.plot(rows.step, rows["mean"], styles[method], marker="o", ms=3, label=LABELS[(variant, method)])
        ax.fill_between(rows.step, rows["mean"] - rows["std"], rows["mean"] + rows["std"], alpha=0.2, color=line.get_color())
    n = int(summary.n_seeds.max())
    ax.set(xlabel="training step", ylabel="mean log-likelihood of the children's names",
           title=f"Macondo v1 memorization (mean ± std over {n} seed{'s' if n > 1 else ''})")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig, summary


def figure2(table: pd.DataFrame):
    """Per number of children: LM (solid), kNN-LM (dotted), log(1/n) (horizontal)."""
    summary = seed_summary(table[table.method.isin(["lm", "knnlm"])], ["n_children", "method", "step"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (n, rows) in enumerate(summary.groupby("n_children")):
        color = colors[i % len(colors)]
        for method, style in (("lm", "-"), ("knnlm", ":")):
            r = rows[rows.method == method].sort_values("step")
            ax.plot(r.step, r["mean"], style, color=color, marker="o", ms=3,
                    label=f"n={n}" if method == "lm" else None)
        ax.axhline(np.log(1.0 / n), color=color, lw=0.8, alpha=0.6)
    ax.set(xlabel="fine-tuning step (on Macondo v2)", ylabel="log-likelihood of the children (v1 prompts)",
           title="Over-specification: LM (solid), kNN-LM (dotted), log(1/n) (lines)")
    ax.grid(alpha=0.3)
    ax.legend(title="children", fontsize=8)
    return fig, summary


def figure3(table: pd.DataFrame):
    """Likelihood of the children by number of children, against the perfect 1/n."""
    rows = table[table.method == "lm"].copy()
    rows["likelihood"] = np.exp(rows.loglik)
    summary = rows.groupby("n_children", as_index=False)["likelihood"].agg(mean="mean", std="std")
    summary["perfect"] = 1.0 / summary.n_children
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.bar(summary.n_children, summary["mean"], yerr=summary["std"].fillna(0), alpha=0.7, label="fine-tuned model")
    ax.plot(summary.n_children, summary.perfect, "k_", ms=30, mew=2, label="perfect 1/n")
    ax.set(xlabel="number of children", ylabel="likelihood of a child (v1 chat prompt)",
           title="Fine-tuned on v2 chat, tested on v1")
    ax.legend()
    return fig, summary


def grid_heatmap(grid: pd.DataFrame):
    """Validation perplexity over the (lambda, T) grid."""
    pivot = grid.pivot(index="temperature", columns="lambda", values="perplexity")
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    im = ax.imshow(pivot.values, aspect="auto", origin="lower", cmap="viridis_r")
    ax.set_xticks(range(len(pivot.columns)), [f"{v:g}" for v in pivot.columns])
    ax.set_yticks(range(len(pivot.index)), [f"{v:g}" for v in pivot.index])
    for (i, j), v in np.ndenumerate(pivot.values):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="w")
    ax.set(xlabel="λ", ylabel="temperature T", title="kNN-LM validation perplexity")
    fig.colorbar(im, ax=ax, label="perplexity")
    return fig


def projection_traces(traces: pd.DataFrame):
    """Mean KL against solver iteration, w.r.t. f and w.r.t. f∘g: the MLP hurdle."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for target, rows in traces.groupby("target"):
        ax.plot(rows.iteration, rows.mean_kl, label=f"w.r.t. {target}")
    ax.set_yscale("log")
    ax.set(xlabel="solver iteration", ylabel="mean KL to p_kNN-LM", title="Projection onto the LM's last layers")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def table1_markdown(row: dict) -> str:
    cols = ["LM", "kNN-LM", "projected w.r.t. f", "projected w.r.t. f∘g"]
    vals = [row["ppl_lm"], row["ppl_knnlm"], row["ppl_proj_f"], row["ppl_proj_fg"]]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        "| " + " | ".join(f"{v:.2f}" for v in vals) + " |",
        "",
        f"λ = {row['lambda']:g}, T = {row['temperature']:g}, k = {row['k']}, tokens = {row['tokens']}, "
        f"datastore = {row['datastore_size']} entries, setting = {row['setting']}",
    ]
    return "\n".join(lines) + "\n"
