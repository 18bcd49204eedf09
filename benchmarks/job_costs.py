"""Per-unit costs of the corpus path's jobs, measured at three corpus sizes.

Runs Table 1's chain (corpus -> tokenizer -> tokens -> corpus LM -> datastore ->
IVF index -> LM pass -> search -> merge -> grid / projection / table1; one shard, so that each
rule is one job) on synthetic corpora whose
training and evaluation splits grow by `--factor` (default 4x, so the ends are
16x apart), one job at a time,
and reads each job's peak RSS and wall time from Snakemake's benchmark files.
Per rule it prints the extra RSS per extra unit of its data between the smallest
and largest size (bytes per training token, bytes per evaluated position) and
the middle size's deviation from that line, against the goals (<= 64 bytes a
training token; <= 16 KB an evaluated position).

    .venv/bin/python benchmarks/job_costs.py [--tokens 25000] [--eval-tokens 16384] [--factor 4] [--write]
    .venv/bin/python benchmarks/job_costs.py --search exact --eval-tokens 2048 --sizes 2 [--write]

--write replaces the `measured:` section of src/knnlm_limits/costs/costs.yaml with the
fitted values (comments and the `assumed:` section are kept). `--search exact` searches
every datastore exactly (the default config's path: BLAS over blocks of the key file) and
fits, from evaluation splits under one search batch, the bytes a neighbour of one batch
costs beyond the modelled key block and per-position arrays; its --write sets only that.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from knnlm_limits import costs  # noqa: E402

K, SHAPE = 1024, {"name": "4x128", "architecture": "gpt2", "n_layer": 4, "n_embd": 128, "n_head": 4}
VOCAB = 4096
TRAIN_GOAL, EVAL_GOAL = 64, 16 * 1024


def config_for(results: Path, train_tokens: int, eval_tokens: int, search: str = "approximate") -> dict:
    knn = {"k": K, "exact_max_keys": 1000, "approximate_index": "IVF64,PQ16", "nprobe": 4, "index_train_sample": 20000}
    if search == "exact":
        knn["exact_max_keys"] = 10**9
    return {
        "results": str(results),
        # synthetic lines hold about 70 tokens of a 4k BPE; the caps fix the sizes exactly
        "corpus": {"synthetic": {"train_lines": train_tokens // 40 + 200, "eval_lines": eval_tokens // 40 + 100, "seed": 0},
                   "block_size": 128, "max_train_tokens": train_tokens,
                   "eval_tokens": {"valid": eval_tokens, "test": eval_tokens}},
        "tokenizer": {"vocab_size": VOCAB},
        # by default the paper's path for a big datastore (IVF, approximate): exact search over
        # the largest size would cost minutes of BLAS that measure nothing about memory
        "knn": {**knn, "shards": 1},
        "corpus_lm": {"shapes": [SHAPE], "train": {"checkpoints": [10], "batch_size": 16}},
        "table1": {"projection": {"tokens": 64, "steps": 20, "lbfgs_steps": 20, "batch": 64}},
    }


def run(train_tokens: int, eval_tokens: int, workdir: Path, search: str = "approximate") -> dict:
    """{rule: (max_rss MB, seconds)} and the data sizes of one run."""
    results = workdir / f"n{train_tokens}" / "results"
    cfg = workdir / f"n{train_tokens}.yaml"
    cfg.write_text(yaml.safe_dump(config_for(results, train_tokens, eval_tokens, search)))
    cmd = [sys.executable, "-m", "snakemake", "all_table1", "--cores", "1", "--quiet", "--configfile", str(cfg)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed for {train_tokens} training tokens:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    bench = results / "benchmarks"
    found = {}
    for tsv in bench.rglob("*.tsv"):
        rel = tsv.relative_to(bench).as_posix()
        with open(tsv) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        found[rule_of(rel)] = (float(row["max_rss"]), float(row["s"]))
    tokens = {s: len(np.load(results / "data/tokens" / f"corpus_{s}.npz")["tokens"]) for s in ("train", "valid", "test")}
    found_at = results / "knn/corpus_lm/4x128/step-10/mlp_input"
    positions = {s: len(np.load(found_at / f"{s}.npz")["targets"]) for s in ("valid", "test")}
    return {"jobs": found, "tokens": tokens, "positions": positions["test"], "biggest": max(positions.values())}


def rule_of(rel: str) -> str:
    """The rule of a benchmark file, from its path under results/benchmarks/."""
    for pattern, rule in ((r"^corpus\.tsv$", "corpus"), (r"^tokenizer\.tsv$", "tokenizer"),
                          (r"^corpus_tokens/(\w+)\.tsv$", r"corpus_tokens_\1"), (r"^train/corpus_lm/", "train_corpus_lm"),
                          (r"^datastore/", "datastore"), (r"^index/.*/trained\.tsv$", "index_trained"),
                          (r"^index/.*/shard-\d+\.tsv$", "index_shard"), (r"^knn/.*/queries\.tsv$", "knn_queries"),
                          (r"^knn/.*/shard-\d+\.tsv$", "knn_shard_search"), (r"^knn/.*/merge\.tsv$", "knn_merge"),
                          (r"/grid\.tsv$", "knnlm_grid"), (r"/projection\.tsv$", "projection"), (r"/table1\.tsv$", "table1")):
        if re.search(pattern, rel):
            return re.sub(pattern, rule, rel) if "\\1" in rule else rule
    return rel


# rule -> (unit, how many units a run has)
UNITS = {
    "corpus": ("training token", lambda r: r["tokens"]["train"]),
    "tokenizer": ("training token", lambda r: r["tokens"]["train"]),
    "corpus_tokens_train": ("training token", lambda r: r["tokens"]["train"]),
    "train_corpus_lm": ("training token", lambda r: r["tokens"]["train"]),
    "datastore": ("training token", lambda r: r["tokens"]["train"]),
    "index_shard": ("training token", lambda r: r["tokens"]["train"]),
    "knn_queries": ("evaluated position", lambda r: r["positions"]),
    "knn_shard_search": ("evaluated position", lambda r: r["positions"]),
    "knn_merge": ("evaluated position", lambda r: r["positions"]),
    "knnlm_grid": ("evaluated position", lambda r: r["positions"]),
    "projection": ("evaluated position", lambda r: r["positions"]),
    "table1": ("evaluated position", lambda r: r["positions"]),
}


def fit(runs: list[dict], rule: str):
    """(bytes per unit, seconds per unit, intercept MB, middle point's deviation from the line)."""
    units = np.array([UNITS[rule][1](r) for r in runs], dtype=np.float64)
    rss = np.array([r["jobs"][rule][0] for r in runs]) * 2**20  # Snakemake's max_rss is in MiB
    secs = np.array([r["jobs"][rule][1] for r in runs])
    slope = (rss[-1] - rss[0]) / (units[-1] - units[0])
    t_slope = (secs[-1] - secs[0]) / (units[-1] - units[0])
    middle = rss[0] + slope * (units[1:-1] - units[0])
    deviation = float(np.max(np.abs(rss[1:-1] - middle) / rss[1:-1])) if len(runs) > 2 else 0.0
    return slope, t_slope, (rss[0] - slope * units[0]) / 1e6, deviation


def fit_exact_search(runs: list[dict]) -> float:
    """Bytes per neighbour of one exact-search batch: the search job's peak RSS less the
    modelled key block, per-position arrays and model, against the batch's neighbours (each
    split under one search batch, so a batch is the biggest split)."""
    from knnlm_limits.index import exact_block_rows

    d, rest, cells = SHAPE["n_embd"], [], []
    for r in runs:
        n_keys = r["tokens"]["train"]
        k = min(K, n_keys)
        block = exact_block_rows(n_keys, k, d) * d * 4
        rss = r["jobs"]["knn_shard_search"][0] * 2**20
        rest.append(rss - block - r["biggest"] * (8 * k + 4 * d))
        cells.append(r["biggest"] * k)
    return (rest[-1] - rest[0]) / (cells[-1] - cells[0])


def main_exact(args) -> None:
    sizes = [args.tokens * args.factor**i for i in range(args.sizes)]
    with tempfile.TemporaryDirectory(prefix="job-costs-") as tmp:
        runs = [run(n, args.eval_tokens * n // args.tokens, Path(tmp), "exact") for n in sizes]
    if any(r["biggest"] > costs.base.SEARCH_BATCH for r in runs):
        sys.exit(f"an evaluation split is over one search batch ({costs.base.SEARCH_BATCH}): lower --eval-tokens")
    b = fit_exact_search(runs)
    for r in runs:
        print(f"{r['tokens']['train']:,} keys, {r['biggest']:,} queries a batch: knn_shard_search peak "
              f"{r['jobs']['knn_shard_search'][0]:.0f} MiB, {r['jobs']['knn_shard_search'][1]:.1f} s")
    print(f"\nexact search: {b:.1f} bytes a neighbour of one batch (beyond the key block and the per-position arrays)")
    if args.write:
        write_values({"exact_search_bytes_per_neighbour": round(max(0.0, b), 1)})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=25_000, help="training tokens of the smallest run")
    ap.add_argument("--eval-tokens", type=int, default=16_384,
                    help="tokens of each evaluation split in the smallest run; the search works in batches of "
                         "16,384 queries, whose temporaries stop growing once a split fills one")
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--sizes", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the fitted values into costs.yaml")
    ap.add_argument("--search", choices=("approximate", "exact"), default="approximate")
    args = ap.parse_args()
    if args.search == "exact":
        return main_exact(args)
    sizes = [args.tokens * args.factor**i for i in range(args.sizes)]
    with tempfile.TemporaryDirectory(prefix="job-costs-") as tmp:
        runs = []
        for n in sizes:
            runs.append(run(n, args.eval_tokens * n // args.tokens, Path(tmp)))
            print(f"ran {n:,} training tokens ({runs[-1]['positions']:,} evaluated test positions)", flush=True)
    print(f"\nk = {K}, keys of {SHAPE['n_embd']} dims; sizes {sizes[0]:,} .. {sizes[-1]:,} training tokens "
          f"({sizes[-1] // sizes[0]}x)\n")
    print(f"{'rule':<22} {'unit':<19} {'bytes/unit':>11} {'goal':>8} {'ok':>3} {'s/unit':>10} {'RSS at smallest':>16} {'middle off line':>16}")
    fitted = {}
    for rule, (unit, _) in UNITS.items():
        if not all(rule in r["jobs"] for r in runs):
            continue
        b, s, intercept, dev = fit(runs, rule)
        goal = TRAIN_GOAL if unit == "training token" else EVAL_GOAL
        fitted[rule] = (b, s, intercept)
        print(f"{rule:<22} {unit:<19} {b:>11.1f} {goal:>8} {'yes' if b <= goal else 'NO':>3} {s:>10.2e} "
              f"{runs[0]['jobs'][rule][0]:>13.0f} MiB {100 * dev:>15.1f}%")
    if args.write:
        write(fitted, runs)


def write(fitted: dict, runs: list[dict]) -> None:
    """The measured section of costs.yaml from these fits (a negative slope, noise, counts as 0)."""
    table = costs.table()
    measured = dict(table["measured"])
    b = {rule: max(0.0, v[0]) for rule, v in fitted.items()}
    s = {rule: max(0.0, v[1]) for rule, v in fitted.items()}
    params = costs.shape_size({"tokenizer": {"pretrained": None, "vocab_size": VOCAB}}, SHAPE)["params"]
    measured.update({
        "process_mb": round(max(fitted["datastore"][2], fitted["knn_queries"][2], fitted["projection"][2])),
        "light_process_mb": round(max(fitted["corpus_tokens_train"][2], fitted["knnlm_grid"][2], fitted["table1"][2])),
        "text_bytes_per_token": round(max(b["corpus"], b["tokenizer"]), 1),
        "tokenizer_seconds_per_token": float(f"{s['corpus_tokens_train']:.3g}"),
        "corpus_tokens_bytes_per_token": round(b["corpus_tokens_train"], 1),
        "train_bytes_per_data_token": round(b["train_corpus_lm"], 1),
        # the datastore's forward runs the body only (keys, no vocabulary logits): 2 FLOPs a body parameter a token
        "cpu_flops_per_thread": float(f"{2 * (params - VOCAB * SHAPE['n_embd']) / s['datastore']:.3g}")
        if s["datastore"] else measured["cpu_flops_per_thread"],
        "datastore_bytes_per_token": round(b["datastore"], 1),
        "search_bytes_per_position": round(max(0.0, b["knn_shard_search"] - 8 * K - 4 * SHAPE["n_embd"]), 1),
        "interpolation_overhead": round(max(b["knnlm_grid"], b["table1"]) / (8 * K), 2),
    })
    write_values(measured)


def write_values(measured: dict) -> None:
    """Set these keys of costs.yaml's measured section, keeping its comments and the rest."""
    text = costs.COSTS_FILE.read_text(encoding="utf-8")
    head, rest = text.split("measured:\n", 1)
    body, tail = rest.split("\nassumed:", 1)
    lines = []
    for line in body.splitlines():
        key = line.strip().split(":", 1)[0]
        if key in measured and not line.strip().startswith("#"):
            comment = line.split("#", 1)[1] if "#" in line else ""
            value = measured[key]
            value = f"{value:.3e}".replace("e-0", "e-").replace("e+0", "e+") if isinstance(value, float) and (value < 1e-3 or value > 1e6) else value
            line = f"  {key}: {value}" + (f"  #{comment}" if comment else "")
        lines.append(line)
    costs.COSTS_FILE.write_text(head + "measured:\n" + "\n".join(lines) + "\nassumed:" + tail, encoding="utf-8")
    print(f"\nwrote the measured section of {costs.COSTS_FILE}")


if __name__ == "__main__":
    main()
