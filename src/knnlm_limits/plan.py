"""A plan before booking a cluster: every job of a dry run, its estimated cost beside its request.

    python -m knnlm_limits.plan --configfile config/paper.yaml [--csv plan.csv] [other snakemake args]

Runs ``snakemake -n`` with the given arguments and reads each job's rule,
wildcards, threads, benchmark file and request (``mem_mb``, ``runtime``, ``gpu``,
``slurm_partition``) from it; the cost model's estimate of each job (knnlm_limits/costs)
comes from the same dry run, through the file named by ``costs.ESTIMATES_FILE``
(Snakemake prints only the resources a scheduler reads). Prints one line per job,
the totals (disk written, GPU-hours, CPU-hours) and every flag:

- ``mem>req`` / ``time>req``: the estimate exceeds what the job asks for (its cap in
  ``resources.<kind>`` is too low: it would be killed);
- ``time>partition``: the request exceeds the partition's time limit;
- ``gpu_mem>partition``: the estimate exceeds the GPU memory of the partition chosen;
- ``group>partition``: a group's jobs, run one after the other in one SLURM job, add
  up to more than the partition's time limit;
- ``unknown``: a size the config does not give (set ``corpus.expected_tokens``).

Then what a cluster's calendar needs, from the DAG's own dependencies (each job's inputs
that another job writes): the critical path, the chain of dependent jobs whose estimated
times add up to the most (no cluster finishes sooner), and the widest set of jobs running at
once when every job starts as soon as its inputs exist, with what they need together (GPUs,
threads, memory).

Exit status 1 if any job is flagged, so a script can refuse to submit.

``measured(jobs)`` sets each job's request beside what a finished run of it used (its
benchmark file): benchmarks/requests_cover.py, and a test on the tiny DAG.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import costs
from .config import validate

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Job:
    rule: str
    wildcards: str
    threads: int
    resources: dict
    group: str | None
    benchmark: str | None = None
    estimate: dict | None = None  # costs.record's row of this job
    flags: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def r(self, name: str, default=0):
        value = self.resources.get(name, default)
        return int(value) if isinstance(value, str) and value.isdigit() else value

    @property
    def key(self) -> tuple:
        """(rule, wildcards) as costs.record writes them."""
        pairs = (item.split("=", 1) for item in self.wildcards.split(", ") if "=" in item)
        return self.rule, tuple(sorted((k, v) for k, v in pairs))

    @property
    def known(self) -> bool:
        return bool(self.estimate and self.estimate["known"])

    def est(self, name: str):
        """The estimate's `name` (mem_mb, minutes, gpu_mem_mb, disk_mb), whole as requests are; None if unknown."""
        return math.ceil(self.estimate[name]) if self.known else None


_RULE = re.compile(r"^\s*(?:local)?rule (\w+):\s*$")
_GROUP = re.compile(r"Group job (\S+) \(jobs")


def parse_dry_run(text: str) -> list[Job]:
    """Jobs of a `snakemake -n` printout (rule, wildcards, threads, resources, group)."""
    jobs, current, group = [], None, None
    for line in text.splitlines():
        if (m := _GROUP.search(line)):
            group = m[1]
            continue
        if (m := _RULE.match(line)):
            if not line.startswith("    "):
                group = None  # a job printed at the top level is in no group
            current = Job(m[1], "", 1, {}, group)
            jobs.append(current)
            continue
        if current is None:
            continue
        key, _, value = line.strip().partition(": ")
        if key in ("input", "output"):
            getattr(current, f"{key}s").extend(value.split(", "))
        elif key == "wildcards":
            current.wildcards = value
        elif key == "benchmark":
            current.benchmark = value
        elif key == "threads":
            current.threads = int(value)
        elif key == "resources":
            current.resources = dict(item.split("=", 1) for item in value.split(", ") if "=" in item)
    return [j for j in jobs if j.rule not in ("all", "all_table1")]


def merged_config(configfiles: list[str], overrides: list[str]) -> dict:
    """The config as Snakemake builds it: config.yaml, each --configfile on top, then --config."""
    def update(base, new):
        for key, value in new.items():
            base[key] = update(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return base

    config = yaml.safe_load((ROOT / "config.yaml").read_text()) or {}
    for path in configfiles:
        update(config, yaml.safe_load(Path(path).read_text()) or {})
    for item in overrides:
        key, _, value = item.partition("=")
        update(config, {key: yaml.safe_load(value)})
    return validate(config, base_dir=ROOT)


def attach_estimates(jobs: list[Job], path) -> None:
    """Give each job its estimate from the rows costs.record wrote while the dry run planned it."""
    rows = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows[(row["rule"], tuple(sorted(row["wildcards"].items())))] = row
    for job in jobs:
        job.estimate = rows.get(job.key)


def check(jobs: list[Job], config: dict) -> None:
    """Flag each job whose request cannot hold its estimate or that no partition can run."""
    parts = {p["name"]: p for p in config["cluster"]["partitions"]}
    for job in jobs:
        part = parts.get(job.r("slurm_partition", ""))
        if not job.known:
            job.flags.append("unknown")
        else:
            if job.est("mem_mb") > job.r("mem_mb"):
                job.flags.append("mem>req")
            if job.est("minutes") > job.r("runtime"):
                job.flags.append("time>req")
        if part is not None:
            if job.r("runtime") > part["max_runtime"]:
                job.flags.append("time>partition")
            if job.r("gpu") and job.known and job.est("gpu_mem_mb") > part["gpu_mem_mb"]:
                job.flags.append("gpu_mem>partition")
    by_group = defaultdict(list)
    for job in jobs:
        if job.group:
            by_group[(job.group, job.wildcards)].append(job)
    for members in by_group.values():
        part = parts.get(members[0].r("slurm_partition", ""))
        total = sum(j.r("runtime") for j in members)
        if part is not None and total > part["max_runtime"]:
            for job in members:
                job.flags.append("group>partition")


def _hours(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 60 else f"{minutes:.0f} min"


def _gb(mb: float) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def table(jobs: list[Job]) -> list[dict]:
    rows = []
    for job in jobs:
        rows.append({
            "rule": job.rule, "wildcards": job.wildcards, "group": job.group or "",
            "partition": job.r("slurm_partition", ""), "threads": job.threads, "gpus": job.r("gpu"),
            "est_mem_mb": job.est("mem_mb"), "req_mem_mb": job.r("mem_mb"),
            "est_gpu_mem_mb": job.est("gpu_mem_mb"), "est_disk_mb": job.est("disk_mb"),
            "est_minutes": job.est("minutes"), "req_minutes": job.r("runtime"),
            "flags": " ".join(job.flags),
        })
    return rows


def report(rows: list[dict]) -> str:
    wide = max([len("wildcards"), *(len(r["wildcards"]) for r in rows)])  # whole: a cut name misleads
    head = f"{'rule':<24} {'wildcards':<{wide}} {'partition':<9} {'thr':>3} {'gpu':>3} " \
           f"{'mem est/req':>19} {'GPU mem':>9} {'disk':>9} {'time est/req':>17}  flags"
    lines = [head, "-" * len(head)]
    for r in rows:
        unknown = r["est_mem_mb"] is None
        mem = f"{'?' if unknown else _gb(r['est_mem_mb'])}/{_gb(r['req_mem_mb'])}"
        time = f"{'?' if unknown else _hours(r['est_minutes'])}/{_hours(r['req_minutes'])}"
        gpu_mem = _gb(r["est_gpu_mem_mb"]) if r["gpus"] and not unknown else "-"
        disk = "?" if unknown else _gb(r["est_disk_mb"])
        lines.append(f"{r['rule']:<24} {r['wildcards']:<{wide}} {r['partition']:<9} {r['threads']:>3} {r['gpus']:>3} "
                     f"{mem:>19} {gpu_mem:>9} {disk:>9} {time:>17}  {r['flags']}")
    known = [r for r in rows if r["est_mem_mb"] is not None]
    disk = sum(r["est_disk_mb"] for r in known)
    gpu_h = sum(r["est_minutes"] * r["gpus"] for r in known) / 60
    cpu_h = sum(r["est_minutes"] * r["threads"] for r in known) / 60
    flagged = [r for r in rows if r["flags"]]
    lines += ["", f"{len(rows)} jobs; estimated disk written {_gb(disk)}, {gpu_h:.1f} GPU-hours, "
                  f"{cpu_h:.1f} CPU-thread-hours (estimates of jobs whose sizes are known)",
              f"{len(flagged)} job(s) flagged" if flagged else "no job flagged: every estimate is within its request "
              "and every request within its partition"]
    return "\n".join(lines)


def dependencies(jobs: list[Job]) -> list[list[int]]:
    """For each job, the indices of the jobs that write its inputs."""
    writer = {path: i for i, job in enumerate(jobs) for path in job.outputs}
    return [sorted({writer[path] for path in job.inputs if path in writer} - {i}) for i, job in enumerate(jobs)]


def schedule(jobs: list[Job]) -> list[tuple[float, float]]:
    """(start, end) minutes of each job when every job starts as soon as the jobs writing its
    inputs end (nodes without limit); unknown estimates count 0."""
    deps = dependencies(jobs)
    times: dict[int, tuple[float, float]] = {}

    def of(i: int) -> tuple[float, float]:
        if i not in times:
            start = max((of(d)[1] for d in deps[i]), default=0.0)
            times[i] = (start, start + (jobs[i].estimate["minutes"] if jobs[i].known else 0.0))
        return times[i]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(jobs) + 100))
    return [of(i) for i in range(len(jobs))]


def critical_path(jobs: list[Job]) -> list[int]:
    """The chain of dependent jobs whose estimated times add up to the most, first job first."""
    if not jobs:
        return []
    deps, times = dependencies(jobs), schedule(jobs)
    path = [max(range(len(jobs)), key=lambda i: times[i][1])]
    while deps[path[-1]]:
        path.append(max(deps[path[-1]], key=lambda d: times[d][1]))
    return path[::-1]


def widest(jobs: list[Job]) -> tuple[float, list[int]]:
    """(the minute, the jobs running then) where the as-soon-as-possible schedule runs the most
    jobs at once."""
    times = schedule(jobs)
    best: tuple[float, list[int]] = (0.0, [])
    for t in sorted({start for start, end in times if end > start}):
        running = [i for i, (start, end) in enumerate(times) if start <= t < end]
        if len(running) > len(best[1]):
            best = (t, running)
    return best


def calendar(jobs: list[Job]) -> str:
    """The critical path and the widest set of jobs at once, as the plan prints them."""
    path, times = critical_path(jobs), schedule(jobs)
    lines = [f"critical path: {_hours(times[path[-1]][1]) if path else '0 min'} over {len(path)} dependent jobs "
             "(no cluster finishes sooner)"]
    for i in path:
        job = jobs[i]
        lines.append(f"  {_hours(times[i][0]):>8} +{_hours(job.est('minutes') or 0):>8}  {job.rule} {job.wildcards}".rstrip())
    at, running = widest(jobs)
    need = [jobs[i] for i in running]
    lines.append(f"widest: {len(need)} jobs at once (from {_hours(at)}, every job started as soon as its inputs exist):"
                 f" {sum(j.r('gpu') for j in need)} GPUs, {sum(j.threads for j in need)} threads, "
                 f"{_gb(sum(j.r('mem_mb') for j in need))} memory requested together")
    by_rule = defaultdict(int)
    for j in need:
        by_rule[j.rule] += 1
    lines.append("  " + ", ".join(f"{rule} x{n}" for rule, n in sorted(by_rule.items())))
    return "\n".join(lines)


def planned_jobs(configfiles: list[str], overrides: list[str], rest: list[str] = ()) -> list[Job]:
    """Every job of the config's whole DAG (a forced dry run), with its estimate; the dry
    run's printout on failure as a RuntimeError."""
    # many cores: a dry run caps each job's threads at --cores, and the plan is for a cluster
    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "4096", *rest]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    if overrides:
        cmd += ["--config", *overrides]
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        estimates = Path(tmp) / "estimates.jsonl"
        estimates.touch()
        env = {**os.environ, costs.ESTIMATES_FILE: str(estimates)}
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
        jobs = parse_dry_run(proc.stdout)
        attach_estimates(jobs, estimates)
    return jobs


MIB = 2**20 / 1e6  # Snakemake's benchmark max_rss is in MiB; requests are in MB


def measured(jobs: list[Job]) -> list[dict]:
    """Each job's request beside what its finished run used (its benchmark file): peak RSS
    in MB and wall minutes, flagged `rss>req` / `time>req` where it used more. Jobs with no
    benchmark file yet are left out."""
    rows = []
    for job in jobs:
        if not job.benchmark or not Path(job.benchmark).is_file():
            continue
        with open(job.benchmark) as fh:
            bench = next(csv.DictReader(fh, delimiter="\t"))
        rss = float(bench["max_rss"]) * MIB if bench["max_rss"] not in ("", "NA", "-") else 0.0
        minutes = float(bench["s"]) / 60
        flags = [f for f, over in (("rss>req", rss > job.r("mem_mb")), ("time>req", minutes > job.r("runtime"))) if over]
        rows.append({"rule": job.rule, "wildcards": job.wildcards, "rss_mb": round(rss, 1),
                     "req_mem_mb": job.r("mem_mb"), "est_mem_mb": job.est("mem_mb"),
                     "minutes": round(minutes, 3), "req_minutes": job.r("runtime"), "est_minutes": job.est("minutes"),
                     "flags": " ".join(flags)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="+", default=[])
    parser.add_argument("--config", nargs="+", default=[])
    parser.add_argument("--csv", help="also write the table as CSV here")
    args, rest = parser.parse_known_args(argv)
    try:
        jobs = planned_jobs(args.configfile, args.config, rest)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 2
    check(jobs, merged_config(args.configfile, args.config))
    rows = table(jobs)
    print(report(rows))
    print()
    print(calendar(jobs))
    if args.csv:
        import pandas as pd

        from . import io

        io.write_csv(args.csv, pd.DataFrame(rows))
    return 1 if any(r["flags"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
