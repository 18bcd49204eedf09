"""Atomic writes: a job killed mid-write never leaves a half-written output.

A file is written to a tmp sibling and renamed onto its path (one atomic
rename). A folder cannot be renamed onto an existing folder, so an existing
one is first renamed aside: at every instant either the path or, between the
two renames, its aside copy is complete (see `replace` and `recover`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _aside_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.old-{os.getpid()}")


def _siblings(path: Path, kind: str) -> list[Path]:
    """The tmp or aside siblings of `path` made by any process (a killed one had another pid)."""
    prefix = f".{path.name}.{kind}-"
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix))


def asides(path) -> list[Path]:
    """The aside copies of `path` that `replace` made and a kill left."""
    return _siblings(Path(path), "old")


def leftovers(path) -> list[Path]:
    """What killed writers of `path` can have left beside it: aside copies, then tmp copies."""
    return asides(path) + _siblings(Path(path), "tmp")


def remove(path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace(src, dst) -> None:
    """os.replace, for folders too: an existing folder dst is renamed aside, src renamed in,
    and the aside copy deleted last, so that after a kill dst or its aside copy is complete."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        os.replace(src, dst)  # atomic for a file
        return
    old = [p for p in asides(dst) if p != src]
    if dst.is_dir():
        # dst is complete, so older aside copies are debris of a kill; removed first so that
        # while dst is missing exactly one aside copy exists
        for stale in old:
            remove(stale)
        aside = _aside_sibling(dst)
        if aside == src:  # src is the aside copy a killed process with our pid left
            aside = aside.with_name(aside.name + "-1")
        old = [aside]
        os.rename(dst, aside)
    os.rename(src, dst)
    for stale in old:
        remove(stale)


def recover(path) -> None:
    """Undo what a kill can leave of writing `path`: bring its aside copy back if `path` is
    missing (then that copy is complete), and delete tmp and aside debris. Only the one
    writer of `path` may call it: it deletes other processes' tmp copies."""
    path = Path(path)
    old = asides(path)
    if old and not path.exists():
        os.rename(old[0], path)
    for stale in leftovers(path):
        remove(stale)


@contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path`; rename it onto `path` on success."""
    path = Path(path)
    if path.exists() and not (path.is_file() or path.is_dir()):
        yield path  # a device or pipe (/dev/null, say): written in place, never renamed over
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    remove(tmp)  # left by a killed process that had our pid: never mix its files into ours
    try:
        yield tmp
        replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


class NpyWriter:
    """A C-ordered .npy file of known dtype and shape, written row batch by row batch with
    plain writes (pages of a written memory map stay in the job's RSS)."""

    def __init__(self, path, dtype, shape):
        self.dtype, self.shape, self.rows = np.dtype(dtype), tuple(shape), 0
        self.fh = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self.fh, header)  # the header open_memmap writes

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.fh.name}: rows of shape {rows.shape[1:]}, the file's are {self.shape[1:]}")
        self.fh.write(rows.reshape(-1).view(np.uint8))  # the array's own bytes, not a copy (tobytes)
        self.rows += len(rows)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        if exc[0] is None and self.rows != self.shape[0]:
            raise ValueError(f"{self.fh.name}: {self.rows} rows written, its header says {self.shape[0]}")


def save_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def save_npy(path, array) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def load_npz(path, names=None) -> dict:
    """The arrays of an .npz file, or only those in `names` (the others are never read)."""
    # allow_pickle=False: nothing untrusted is unpickled.
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if names is None or k in names}


def save_figure(fig, png_path, pdf_path=None) -> None:
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    if pdf_path is not None:
        with atomic_path(pdf_path) as tmp:
            fig.savefig(tmp, format="pdf", bbox_inches="tight")
