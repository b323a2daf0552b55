"""One non-blocking, process-wide lock on a file, naming its holder.

Used for a cluster (one astrostack process per cluster at a time) and for
bench runs (never two at once). The file is kept afterwards: unlinking a lock
file races with the next process opening it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def pid_lock(path: Path, busy: Callable[[str], Exception]) -> Iterator[Path]:
    """Hold PATH (``flock``, non-blocking) with our pid in it; when another
    process holds it, raise ``busy(holder_pid)`` at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(_holder(descriptor)) from None
        try:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            yield path
        finally:
            # Explicit unlock: a child that inherited the descriptor would otherwise keep it.
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _holder(descriptor: int) -> str:
    os.lseek(descriptor, 0, os.SEEK_SET)
    text = os.read(descriptor, 32).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"
