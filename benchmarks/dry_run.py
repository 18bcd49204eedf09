"""Wall time and job count of the paper-scale dry run (goal: <= 3 s), in one run.

Plans config/paper.yaml with `snakemake -n` into a scratch results folder: no
network, no GPU, nothing written but Snakemake's own metadata.
"""

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml", "--config", f"results={tmp}/results"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    total = int(re.search(r"^total\s+(\d+)$", proc.stdout, re.M)[1])
    table = proc.stdout.split("Job stats:")[1].split("\n\n")[0]
    print(table)
    print(f"paper-scale dry run: {total} jobs planned in {wall:.2f}s (goal <= 3 s)")


if __name__ == "__main__":
    main()
