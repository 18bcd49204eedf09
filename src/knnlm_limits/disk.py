"""Free disk space, checked before a job writes a large file.

A memory-mapped output is a sparse file until its pages are written back; on a
full disk that write-back fails and the job dies with SIGBUS, hours in and with
no message. Checking the free space up front, when the file's size is known,
turns that into an error that names the file, the bytes it needs and the bytes
free.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class NotEnoughSpace(OSError):
    """The disk a file is about to be written to has too little free space."""


def _existing_folder(path: Path) -> Path:
    """The folder `path` will be written in, or its nearest ancestor that exists yet."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def require_free_space(path, n_bytes: int, what: str) -> None:
    """Raise NotEnoughSpace unless the disk of file `path` has `n_bytes` free (`what`: the file, in words)."""
    path = Path(path)
    folder = _existing_folder(path)
    free = shutil.disk_usage(folder).free
    if free < n_bytes:
        raise NotEnoughSpace(
            errno.ENOSPC,
            f"not enough disk space for {what}: {str(path)!r} needs {n_bytes} bytes ({_gib(n_bytes)}), "
            f"{str(folder)!r} has {free} bytes free ({_gib(free)})",
        )
