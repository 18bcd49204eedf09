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
    pin_threads(snakemake.threads)
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


def release_freed_memory() -> None:
    """Have glibc hand freed large blocks back to the system at once (a fixed mmap threshold).

    By default glibc raises its mmap threshold each time a large block is freed, then serves
    later large blocks from its heap, which it seldom shrinks: a job that streams batches
    then grows with the data it has streamed, not with its batch (measured: the datastore
    job's resident memory +290 bytes a key from 100k to 400k keys; with this, +5). Called by
    the streaming jobs only: training reuses its big blocks every step and gains from the heap.
    """
    import ctypes

    M_MMAP_THRESHOLD = -3
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own policy


def pin_threads(n: int) -> None:
    """Hold the job to its declared threads, whenever it imports torch or FAISS.

    Both default to one thread per core; a job that imports them lazily (after this
    runs) would otherwise take every core while Snakemake runs another job beside it,
    and the two slow each other down (seen: 37 s instead of 32 s for a Figure 2 run
    evaluation beside a busy core, with 40% more CPU time). The environment covers
    later imports; libraries already imported are set directly.
    """
    n = max(1, int(n))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(n)
    if (torch := sys.modules.get("torch")) is not None:
        torch.set_num_threads(n)
    if (faiss := sys.modules.get("faiss")) is not None:
        faiss.omp_set_num_threads(n)
