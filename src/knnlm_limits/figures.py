"""Figures and tables: every plotted number is also returned as a DataFrame (CSV)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .stats import t_interval  # noqa: E402

LABELS = {
    ("full", "lm"): "LM",
    ("no_last_mlp", "lm"): "LM without last MLP",
    ("full", "knnlm"): "kNN-LM",
    ("no_last_mlp", "knnlm"): "kNN-LM (no-MLP encoder)",
}
# Figure 2's methods: solid, dotted, dashed
FIGURE2_STYLES = {"lm": "-", "knnlm": ":", "lm_memory": "--"}


def seed_summary(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over children per seed, then over seeds: mean, std and the 95% t interval."""
    per_seed = table.groupby(by + ["seed"], as_index=False)["loglik"].mean()
    rows = []
    for key, group in per_seed.groupby(by):
        mean, low, high = t_interval(group.loglik)
        rows.append({**dict(zip(by, key)), "mean": mean, "std": float(group.loglik.std(ddof=1)) if len(group) > 1 else 0.0,
                     "ci_low": low, "ci_high": high, "n_seeds": len(group)})
    return pd.DataFrame(rows)


def _band(ax, rows, color):
    """The 95% CI over seeds as a band (none with one seed)."""
    if rows.ci_low.notna().all():
        ax.fill_between(rows.step, rows.ci_low, rows.ci_high, alpha=0.2, color=color, lw=0)


def _seeds(summary) -> str:
    n = int(summary.n_seeds.max())
    return f"{n} seed{'s' if n > 1 else ''}" + (", 95% CI bands" if n > 1 else "")


def figure1(table: pd.DataFrame, title: str = ""):
    """Mean child log-likelihood against step: LM with and without the last MLP, kNN-LM."""
    summary = seed_summary(table[table.method.isin(["lm", "knnlm"])], ["variant", "method", "step"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"lm": "-", "knnlm": ":"}
    for (variant, method), rows in summary.groupby(["variant", "method"]):
        rows = rows.sort_values("step")
        line, = ax.plot(rows.step, rows["mean"], styles[method], marker="o", ms=3, label=LABELS[(variant, method)])
        _band(ax, rows, line.get_color())
    ax.set(xlabel="training step", ylabel="mean log-likelihood of the children's names",
           title=f"Macondo v1 memorization {title}(mean over {_seeds(summary)})")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig, summary


def figure2(table: pd.DataFrame, title: str = ""):
    """Per number of children: LM (solid), kNN-LM (dotted), LM + memory (dashed, where a
    memory was trained), log(1/n) (horizontal)."""
    summary = seed_summary(table[table.method.isin(list(FIGURE2_STYLES))], ["n_children", "method", "step"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (n, rows) in enumerate(summary.groupby("n_children")):
        color = colors[i % len(colors)]
        for method, style in FIGURE2_STYLES.items():
            r = rows[rows.method == method].sort_values("step")
            if r.empty:
                continue
            ax.plot(r.step, r["mean"], style, color=color, marker="o" if method != "lm_memory" else "s", ms=3,
                    label=f"n={n}" if method == "lm" else None)
            _band(ax, r, color)
        ax.axhline(np.log(1.0 / n), color=color, lw=0.8, alpha=0.6)
    memory = " LM + memory (dashed)," if (summary.method == "lm_memory").any() else ""
    ax.set(xlabel="fine-tuning step (on Macondo v2)", ylabel="log-likelihood of the children (v1 prompts)",
           title=f"Over-specification {title}: LM (solid), kNN-LM (dotted),{memory} log(1/n) (lines)\n{_seeds(summary)}")
    ax.grid(alpha=0.3)
    ax.legend(title="children", fontsize=8)
    return fig, summary


def figure3(table: pd.DataFrame, title: str = ""):
    """Likelihood of the children by number of children, against the perfect 1/n (log axis,
    values printed: at small scale the likelihoods are orders of magnitude below 1/n)."""
    rows = table[table.method == "lm"].copy()
    rows["likelihood"] = np.exp(rows.loglik)
    summary = rows.groupby("n_children", as_index=False)["likelihood"].agg(mean="mean", std="std", n_prompts="count")
    summary["perfect"] = 1.0 / summary.n_children
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.bar(summary.n_children, summary["mean"], alpha=0.7, label="fine-tuned model (mean over children)")
    ax.scatter(rows.n_children, rows.likelihood, s=6, color="k", alpha=0.3, label="each child")
    ax.plot(summary.n_children, summary.perfect, "r_", ms=30, mew=2, label="perfect 1/n")
    # the means under each n (not on the bars, where the points of each child would cover them)
    ax.set_xticks(summary.n_children, [f"{n}\nmean {mean:.2g}" for n, mean in zip(summary.n_children, summary["mean"])])
    ax.set_yscale("log")
    ax.set(xlabel="number of children", ylabel="likelihood of a child (v1 chat prompt)",
           title=f"Fine-tuned on v2 chat turns, tested on v1 {title}")
    ax.grid(alpha=0.3, which="both", axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    fig.tight_layout()
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


def projection_traces(traces: pd.DataFrame, summary: pd.DataFrame | None = None):
    """Mean KL against solver iteration, w.r.t. f and f∘g (the MLP hurdle), and f's convex
    reverse-KL optimum; the legend says whether each converged."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    done = {} if summary is None else dict(zip(summary.projection, summary.converged))
    for target, rows in traces.groupby("target", sort=False):
        mark = {True: " (converged)", False: " (not converged)"}.get(done.get(target), "")
        ax.plot(rows.iteration, rows.mean_kl.clip(lower=1e-12), label=f"w.r.t. {target}{mark}")
    ax.set_yscale("log")
    ax.set(xlabel="solver iteration", ylabel="mean KL to p_kNN-LM", title="Projection onto the LM's last layers")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def memory_gap_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The findings findings_by_scale draws the memory's gap from: memory_recovers_knn_gain with
    both sides at their validation-tuned setting."""
    return frame[(frame.finding == "memory_recovers_knn_gain") & (frame.setting == "tuned")]


def findings_by_scale(frame: pd.DataFrame, ylim=(-1.0, 2.0)):
    """The two projection gaps, and where the memory stage ran the memory's, against model
    width, one line per training length, with CIs.

    A gap is a ratio over ppl_LM - ppl_kNN-LM: where the kNN-LM barely beats the LM its
    interval explodes. The memory's gap is (ppl_LM+memory - ppl_kNN-LM) / (ppl_LM - ppl_kNN-LM)
    = 1 - memory_recovers_knn_gain (the kNN-LM at its tuned setting): on the same scale, 0 = the
    memory reaches the kNN-LM. A point whose interval leaves the axis is drawn hollow (an arrow
    at the edge if the estimate leaves it too) and listed under the panel, where labels cannot overlap;
    so is a point not measured (no marker).
    """
    claims = {"softmax_bottleneck_ruled_out": "gap w.r.t. f (paper: -0.07)",
              "mlp_hurdle_in_projection": "gap w.r.t. f∘g (paper: 0.99)"}
    kept = memory_gap_rows(frame)
    if len(kept):
        claims["memory_gap"] = "gap of LM + memory (paper: 1 - 0.45 = 0.55)"
        kept = kept.assign(finding="memory_gap", measured=1 - kept.measured, ci_low=1 - kept.ci_high,
                           ci_high=1 - kept.ci_low)
    table1 = pd.concat([frame[frame.finding.isin([*claims, "softmax_bottleneck_ruled_out_convex"])], kept])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lengths = sorted(table1.step.fillna(-1).unique())
    keys = sorted(table1.key.fillna("").unique()) if "key" in table1 else [""]
    many_keys = len(keys) > 1
    if "key" not in table1:
        table1 = table1.assign(key="")
    fig, axes = plt.subplots(1, len(claims), figsize=(5.5 * len(claims), 5.6), sharey=True)
    for ax, (finding, title) in zip(axes, claims.items()):
        shown = [(finding, "-", "", 0.0)]
        if finding == "softmax_bottleneck_ruled_out":  # f's convex optimum: what f can express
            shown.append(("softmax_bottleneck_ruled_out_convex", "--", ", convex optimum (reverse KL)", 0.03))
        beyond = []  # lines under the panel for the points whose interval leaves the axis
        for name, style, suffix, shift in shown:
            rows = table1[table1.finding == name]
            for (step, key), line in rows.groupby([rows.step.fillna(-1), rows.key.fillna("")]):
                line = line.sort_values("n_embd")
                # side by side, not on top of each other: convex optimum and each key shifted a little
                x = line.n_embd * (1 + shift + 0.02 * keys.index(key))
                label = ("pretrained" if step < 0 else f"{int(step)} steps") + (f", {key}" if many_keys else "") + suffix
                color = colors[(lengths.index(step) + len(lengths) * keys.index(key)) % len(colors)]
                inside = (line.ci_low >= ylim[0]) & (line.ci_high <= ylim[1])
                ok, xo = line[inside], x[inside]
                ax.errorbar(xo, ok.measured, yerr=[ok.measured - ok.ci_low, ok.ci_high - ok.measured],
                            marker="o", ls=style, capsize=3, label=label, color=color)
                for xi, r in zip(x[~inside], line[~inside].itertuples()):  # undecided: hollow, listed below
                    if pd.isna(r.measured):  # not measured (the memory's: no kNN-LM gain to recover)
                        beyond.append((color, f"width {r.n_embd:g}, {label}: not measured"))
                        continue
                    marker, y = "o", r.measured
                    if not ylim[0] <= r.measured <= ylim[1]:
                        marker, y = ("^", ylim[1]) if r.measured > ylim[1] else ("v", ylim[0])
                    ax.plot([xi], [y], marker=marker, mfc="none", ms=7, color=color, ls="none", clip_on=False)
                    beyond.append((color, f"width {r.n_embd:g}, {label}: {r.measured:.2g} "
                                          f"[{r.ci_low:.2g}, {r.ci_high:.2g}]"))
        for i, (color, text) in enumerate(beyond):
            ax.text(0.0, -0.2 - 0.06 * i, text, transform=ax.transAxes, fontsize=7, color=color, va="top")
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(1, color="k", lw=0.8, ls="--")
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log", base=2)
        widths = sorted(table1.n_embd.dropna().unique())
        ax.set_xticks(widths, [str(int(w)) for w in widths])
        if widths:  # room around the points, also for a single width
            ax.set_xlim(min(widths) / 1.25, max(widths) * 1.25)
        ax.minorticks_off()
        ax.set(xlabel="model width (n_embd)", title=title, ylim=ylim)
        ax.grid(alpha=0.3)
        ax.legend(title="training length", fontsize=7, loc="lower left")
    axes[0].set_ylabel("(ppl_proj - ppl_kNN-LM) / (ppl_LM - ppl_kNN-LM), 95% CI")
    fig.suptitle("0 = the projection (or the memory) reaches the kNN-LM, 1 = no better than the LM\n"
                 "hollow: the interval leaves the axis (listed below each panel); an arrow: so does the estimate", fontsize=10)
    fig.subplots_adjust(bottom=0.38, top=0.86, wspace=0.08)
    return fig


def perplexity_by_key(by_key: pd.DataFrame):
    """Test perplexity per datastore key at each scale point: LM, kNN-LM fixed and tuned."""
    points = list(dict.fromkeys(f"{m}" + ("" if pd.isna(s) else f" step {int(s)}") for m, s in zip(by_key.model, by_key.step)))
    keys = list(dict.fromkeys(by_key.key))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(points) * max(1, len(keys))), 4.2))
    width = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        rows = by_key[by_key.key == key]
        x = np.array([points.index(f"{m}" + ("" if pd.isna(s) else f" step {int(s)}")) for m, s in zip(rows.model, rows.step)])
        at = x - 0.4 + width * (i + 0.5)
        ax.bar(at, rows.test_ppl_knnlm_fixed, width * 0.9, label=f"kNN-LM, {key}", alpha=0.85)
        ax.plot(at, rows.test_ppl_knnlm_tuned, "k^", ms=6, label="tuned (λ, T)" if i == 0 else None)
    lm = by_key.drop_duplicates(["model", "step"])
    for m, s, ppl in zip(lm.model, lm.step, lm.test_ppl_lm):
        x = points.index(f"{m}" + ("" if pd.isna(s) else f" step {int(s)}"))
        ax.hlines(ppl, x - 0.45, x + 0.45, colors="k", linestyles="--", label="LM" if x == 0 else None)
    ax.set_xticks(range(len(points)), points, fontsize=8)
    ax.set(ylabel="test perplexity", title="Perplexity by datastore key (knn.keys)")
    values = by_key[["test_ppl_lm", "test_ppl_knnlm_fixed", "test_ppl_knnlm_tuned"]].to_numpy()
    ax.set_ylim(0.9 * values.min(), 1.05 * values.max())  # bars cut: the differences are what matters
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="best")
    return fig


def frontier(points: pd.DataFrame, title: str = ""):
    """The storage-perplexity frontier: bytes of the retrieval component (log axis) against test
    perplexity with its 95% bootstrap interval. The LM alone (0 bytes) is the dashed line and
    its band; every component is annotated with its name and size (labels of components of
    the same size stacked); a memory trained on values alone (objective 'values', alpha 0) is
    hollow."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    lm = points[points.kind == "lm"].iloc[0]
    ax.axhline(lm.test_ppl, color="k", ls="--", lw=1, label=f"LM alone (0 bytes): {lm.test_ppl:.1f}")
    ax.axhspan(lm.ci_low, lm.ci_high, color="k", alpha=0.08, lw=0)
    styles = {"knn": ("s", "C0", "kNN-LM, float16 datastore"), "knn_pq": ("D", "C1", "kNN-LM, PQ codes (no re-ranking)"),
              "memory": ("o", "C2", "LM + memory (MLP); hollow: trained on values alone")}
    shown = points[points.kind.isin(list(styles))].sort_values(["bytes", "component"]).reset_index(drop=True)
    for i, r in enumerate(shown.itertuples()):
        marker, color, label = styles[r.kind]
        first = (shown.kind[:i] != r.kind).all()
        ax.errorbar([r.bytes], [r.test_ppl], yerr=[[r.test_ppl - r.ci_low], [r.ci_high - r.test_ppl]], fmt=marker,
                    color=color, mfc="white" if r.objective == "values" else color, capsize=3, ls="none",
                    label=label if first else None)
        name = r.component.split(", ")[-1].replace("LM + memory ", "memory ")
        # neighbours in bytes alternate above and below; points of the same size stack
        same = int((shown.bytes[:i] == r.bytes).sum())
        ax.annotate(f"{name}: {r.test_ppl:.1f}, {_bytes(r.bytes)}", (r.bytes, r.test_ppl), textcoords="offset points",
                    xytext=(7, (8 if i % 2 == 0 else -14) - 10 * same), fontsize=7, color=color)
    ax.set_xscale("log")
    if len(shown):
        ax.set_xlim(shown.bytes.min() / 2, shown.bytes.max() * 6)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 3)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _bytes(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="bytes at query time (the retrieval component; log scale)", ylabel="test perplexity, 95% CI",
           title=f"What retrieval's gain costs {title}".strip())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1, 0.93))
    fig.tight_layout()
    return fig


def datastore_scaling(table: pd.DataFrame, title: str = ""):
    """Test perplexity against the datastore's entries (log axis: the first s of N shards), at
    the fixed and the validation-tuned (lambda, T), each with its 95% bootstrap interval; the
    LM's perplexity is the dashed line and its band."""
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lm = table.iloc[0]
    ax.axhline(lm.test_ppl_lm, color="k", ls="--", lw=1, label=f"LM alone: {lm.test_ppl_lm:.1f}")
    ax.axhspan(lm.lm_ci_low, lm.lm_ci_high, color="k", alpha=0.08, lw=0)
    for setting, color, label in (("fixed", "C0", "kNN-LM, fixed λ, T"), ("tuned", "C1", "kNN-LM, validation-tuned λ, T")):
        ppl = table[f"test_ppl_{setting}"]
        err = [ppl - table[f"{setting}_ci_low"], table[f"{setting}_ci_high"] - ppl]
        ax.errorbar(table.entries, ppl, yerr=err, fmt="o-", color=color, capsize=3, label=label)
    for r in table.itertuples():
        ax.annotate(f"{r.shards}/{r.of_shards}", (r.entries, r.test_ppl_tuned), textcoords="offset points",
                    xytext=(4, -12), fontsize=7, color="C1")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set(xlabel="datastore entries (the first s of N shards; log scale)", ylabel="test perplexity, 95% CI",
           title=f"kNN-LM by datastore size {title}".strip())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def gain_by_frequency(buckets: pd.DataFrame, title: str = ""):
    """Mean kNN-LM gain per bucket of the target's training frequency, its 95% CI, and the
    bucket's share of the test tokens printed under each point."""
    fig, ax = plt.subplots(figsize=(7, 4))
    shown = buckets[buckets.tokens > 0].reset_index(drop=True)
    x = np.arange(len(shown))
    err = np.vstack([shown.mean_gain - shown.ci_low, shown.ci_high - shown.mean_gain])
    ax.errorbar(x, shown.mean_gain, yerr=np.nan_to_num(err), fmt="o", capsize=4, color="C0", label="mean gain, 95% CI")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, [f"{b}\n{s:.1%} of tokens" for b, s in zip(shown.bucket, shown.share)])
    ax.set_xlabel("times the target occurs in the training split")
    ax.set_ylabel("log p_kNN-LM − log p_LM (nats)")
    ax.set_title(f"Where retrieval helps {title}".strip())
    ax.legend(loc="best", frameon=False)
    fig.tight_layout()
    return fig


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (numbers to 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def table1_markdown(row: dict) -> str:
    cols = ["LM", "kNN-LM", "projected w.r.t. f", "projected w.r.t. f∘g", "f, reverse KL (convex optimum)"]
    vals = [row["ppl_lm"], row["ppl_knnlm"], row["ppl_proj_f"], row["ppl_proj_fg"], row["ppl_proj_f_reverse"]]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        "| " + " | ".join(f"{v:.2f}" for v in vals) + " |",
        "",
        f"λ = {row['lambda']:g}, T = {row['temperature']:g}, k = {row['k']}, tokens = {row['tokens']}, "
        f"datastore = {row['datastore_size']} entries, setting = {row['setting']}",
    ]
    return "\n".join(lines) + "\n"


def neighbours_html(table: pd.DataFrame, title: str = "") -> str:
    """The neighbours table as one HTML page: per test position its context, target and
    probabilities, then its neighbours (matches of the target in bold)."""
    from html import escape

    def text(s) -> str:  # tokens as they are: spaces and newlines visible
        return escape(str(s)).replace("\n", "↵")

    parts = [f"<html><head><meta charset='utf-8'><title>Retrieved neighbours {escape(title)}</title>"
             "<style>body{font-family:sans-serif} td,th{padding:2px 8px;text-align:left}"
             " code{white-space:pre;background:#f4f4f4} .hit{font-weight:bold;color:#05620f}</style></head><body>",
             f"<h1>Retrieved neighbours {escape(title)}</h1>",
             "<p>Sampled test positions, largest |gain| first; gain = log p<sub>kNN-LM</sub> − log p<sub>LM</sub> "
             "of the target. Each neighbour: the training context it came from, its next token (bold: the "
             "target), distance and weight in p<sub>kNN</sub>.</p>"]
    for _, rows in table.groupby("rank", sort=True):
        first = rows.iloc[0]
        parts.append(
            f"<h3>#{first['rank']} position {first['position']}: gain {first['gain']:+.3f}</h3>"
            f"<p><code>{text(first['context'])}</code> → <b><code>{text(first['target'])}</code></b>"
            f"<br>p<sub>LM</sub> {first['p_lm']:.4f}, p<sub>kNN</sub> {first['p_knn']:.4f}, "
            f"p<sub>kNN-LM</sub> {first['p_knnlm']:.4f}</p>")
        listed = rows[rows.neighbour > 0]
        if listed.empty:
            parts.append("<p>no neighbour found</p>")
            continue
        cells = "".join(
            f"<tr{' class=hit' if r.matches_target else ''}><td>{r.neighbour}</td><td>{r.train_position}</td>"
            f"<td><code>{text(r.neighbour_context)}</code></td><td><code>{text(r.next_token)}</code></td>"
            f"<td>{r.distance:.4g}</td><td>{r.weight:.4f}</td></tr>"
            for r in listed.itertuples())
        parts.append("<table><tr><th>#</th><th>training position</th><th>context</th><th>next token</th>"
                     f"<th>distance</th><th>weight</th></tr>{cells}</table>")
    return "\n".join(parts) + "\n</body></html>\n"
