"""Where a finished run's time went, per rule, from its results/benchmarks/.

For each rule: jobs, job-seconds (wall), CPU-seconds (Snakemake's sampled `cpu_time`: the
sampler reads the process every second, then every 30 s, never at exit, so it is a lower
bound), and the bare start-up cost of its jobs: a fresh Python importing what the script
imports, plus torch, transformers or the model module if the job's log says it imported
them (lazy imports), timed now, in this run. Two shares of all job-seconds are printed:

- start-up share: the job-seconds spent starting processes (each job's start-up),
  the fixed cost every job pays before its own work;
- small-job share: the job-seconds of jobs whose own computation (seconds minus
  start-up) is under a second (goal <= 15%);
- short-job share: the job-seconds of jobs under 20 s of wall time in all (the
  measure issue 12 used for the run before it: 631 of 1,796 job-seconds).

    .venv/bin/python benchmarks/job_time.py results [--checkout .]

--checkout names the repository whose rules/ and scripts/ made the run (to
read a run made by an older checkout, point it there).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path


def _path_regex(template: str):
    """An f-string path of a rule file ('{BENCH}/train/{{shape}}.tsv') as a regex of the path after
    its first field; wildcards become named groups."""
    pattern = re.escape(template.split("}/", 1)[1])
    pattern = re.sub(r"\\\{\\\{(\w+)\\\}\\\}", r"(?P<\1>.+?)", pattern)
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", ".+?", pattern) + "$")


def rule_files(checkout: Path):
    """[(rule, benchmark regex, log template, script)] from the rule files."""
    out = []
    for smk in sorted((checkout / "rules").glob("*.smk")):
        parts = re.split(r"^\s*rule (\w+):", smk.read_text(), flags=re.M)[1:]
        for rule, body in zip(parts[::2], parts[1::2]):
            bench = re.search(r'benchmark:\s*f?"(\{BENCH\}/[^"]+)"', body)
            log = re.search(r'log:\s*f?"(\{LOGS\}/[^"]+)"', body)
            script = re.search(r'script:\s*"\.\./scripts/([^"]+)"', body)
            if bench and script:
                out.append((rule, _path_regex(bench.group(1)), log.group(1) if log else None,
                            checkout / "scripts" / script.group(1)))
    return out


def job_imports(results: Path, log_template: str | None, wildcards: dict) -> str:
    """What a job's log says it imported ('' if it does not say: an older run)."""
    if not log_template:
        return ""
    rel = log_template.split("}/", 1)[1]
    for name, value in wildcards.items():
        rel = rel.replace("{{" + name + "}}", value)
    log = results / "logs" / rel
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return next((line.split(": ", 1)[1] for line in reversed(lines) if line.startswith("# job imported: ")), "")


def startup_seconds(script: Path, checkout: Path, extra: str = "", repeats: int = 2) -> float:
    """A fresh Python importing what `script` imports, and `extra` (best of `repeats`)."""
    imports = "\n".join(line for line in script.read_text().splitlines() if line.startswith(("import ", "from ")))
    imports += "\n" + extra
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", imports], check=True, env=env, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()

    rules = rule_files(args.checkout)
    jobs = defaultdict(list)  # rule -> [(seconds, cpu seconds, imports)]
    unmatched = []
    for tsv in sorted((args.results / "benchmarks").rglob("*.tsv")):
        rel = str(tsv.relative_to(args.results / "benchmarks"))
        header, values = (line.split("\t") for line in tsv.read_text().splitlines()[:2])
        row = dict(zip(header, values))
        match = next(((name, m, log) for name, regex, log, _ in rules if (m := regex.match(rel))), None)
        if match is None:
            unmatched.append(rel)
            continue
        name, m, log = match
        jobs[name].append((float(row["s"]), float(row["cpu_time"]), job_imports(args.results, log, m.groupdict())))
    scripts = {name: script for name, _, _, script in rules}
    lazy = {"": "", "none": "", "torch": "import torch", "transformers": "from transformers import PreTrainedTokenizerFast",
            "torch transformers": "from transformers import AutoTokenizer",
            "torch transformers knnlm_limits.model": "import knnlm_limits.model"}
    startup = {(rule, imp): startup_seconds(scripts[rule], args.checkout, lazy.get(imp, ""))
               for rule, runs in jobs.items() for imp in {r[2] for r in runs}}

    total = sum(s for runs in jobs.values() for s, _, _ in runs)
    fixed = 0.0
    starting = sum(min(s, startup[rule, imp]) for rule, runs in jobs.items() for s, _, imp in runs)
    print(f"{'rule':28} {'jobs':>5} {'job-s':>8} {'CPU-s':>8} {'start-up s':>10} {'fixed-cost jobs':>15}")
    for rule, runs in sorted(jobs.items(), key=lambda kv: -sum(r[0] for r in kv[1])):
        small = [s for s, _, imp in runs if s - startup[rule, imp] < 1.0]
        fixed += sum(small)
        print(f"{rule:28} {len(runs):5d} {sum(r[0] for r in runs):8.1f} {sum(r[1] for r in runs):8.1f} "
              f"{max(startup[rule, imp] for _, _, imp in runs):10.2f} {len(small):15d}")
    n_jobs = sum(len(r) for r in jobs.values())
    print(f"\n{n_jobs} jobs, {total:.0f} job-seconds")
    print(f"start-up share: {starting:.0f} job-seconds = {100 * starting / total:.1f}% spent starting processes")
    print(f"small-job share: {fixed:.0f} job-seconds = {100 * fixed / total:.1f}% in jobs whose own computation "
          f"is under 1 s (goal <= 15%)")
    short = sum(s for runs in jobs.values() for s, _, _ in runs if s < 20)
    print(f"short-job share: {short:.0f} job-seconds = {100 * short / total:.1f}% in jobs under 20 s")
    if unmatched:
        print(f"not matched to a rule: {unmatched}")


if __name__ == "__main__":
    main()
