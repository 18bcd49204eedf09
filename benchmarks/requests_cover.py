"""Every job of a finished run against what it asks for: its peak RSS and wall time (its
Snakemake benchmark file) beside the memory and time the cost model requests for it.

    .venv/bin/python benchmarks/requests_cover.py --configfile config/wikitext2-local.yaml [--config results=DIR]

Plans the config's whole DAG (a forced dry run, as `make plan`), reads each job's benchmark
file under the config's results folder (jobs not run yet are left out) and prints, per job,
used / requested memory and time with their ratios; a job that used more than it asks for is
flagged (`rss>req`, `time>req`): on a cluster that enforces its requests it would be killed.
Exit status 1 if any job is flagged. Snakemake samples RSS every 0.5 s for a job's first 30 s
and every 30 s after: a longer job's peak can fall between two samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from knnlm_limits import plan  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", nargs="+", default=[])
    ap.add_argument("--config", nargs="+", default=[])
    args = ap.parse_args(argv)
    rows = plan.measured(plan.planned_jobs(args.configfile, args.config))
    if not rows:
        print("no benchmark file found: run the workflow with this config first")
        return 1
    print(f"{'rule':<24} {'wildcards':<56} {'RSS MB used/req':>17} {'ratio':>6} {'min used/req':>13} {'ratio':>6}  flags")
    for r in rows:
        print(f"{r['rule']:<24} {r['wildcards'][:56]:<56} {r['rss_mb']:>8.0f}/{r['req_mem_mb']:<8} "
              f"{r['rss_mb'] / r['req_mem_mb']:>6.2f} {r['minutes']:>6.2f}/{r['req_minutes']:<6} "
              f"{r['minutes'] / r['req_minutes']:>6.2f}  {r['flags']}")
    flagged = [r for r in rows if r["flags"]]
    worst = max(rows, key=lambda r: r["rss_mb"] / r["req_mem_mb"])
    print(f"\n{len(rows)} jobs measured; highest memory ratio {worst['rss_mb'] / worst['req_mem_mb']:.2f} "
          f"({worst['rule']}); {len(flagged)} used more than requested")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
