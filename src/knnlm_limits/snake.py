"""Glue for the thin scripts in scripts/: logging and settings from the `snakemake` object."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager


JOB_IMPORTS = "# job imported: "


@contextmanager
def logged(snakemake):
    """Send the job's stdout/stderr (progress bars included) to its log file."""
    torch_threads(snakemake.threads)
    path = snakemake.log[0] if snakemake.log else None
    if path is None:
        yield sys.stderr
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", buffering=1) as log:
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log
        try:
            yield log
        except BaseException:
            traceback.print_exc(file=log)
            raise
        finally:
            # what the job had to import, for benchmarks/job_time.py's start-up baseline
            heavy = [m for m in ("torch", "transformers", "knnlm_limits.model") if m in sys.modules]
            print(f"{JOB_IMPORTS}{' '.join(heavy) or 'none'}", file=log)
            sys.stdout, sys.stderr = old


def torch_threads(n: int) -> None:
    """Pin torch to the job's threads, if the script uses torch at all (its import costs ~1.5 s)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, int(n)))
