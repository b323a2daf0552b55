"""Host commands with a deadline; a failure is one line naming what was being done."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

from .errors import CommandFailed

LOG = logging.getLogger(__name__)


def run(argv: Sequence[str], what: str, timeout_s: float, check: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ARGV; raise CommandFailed("WHAT: stderr") when it fails and ``check`` is set."""
    LOG.debug("%s: %s", what, " ".join(argv))
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, input=stdin)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{what}: {argv[0]} timed out after {timeout_s:g} s") from exc
    except FileNotFoundError as exc:
        raise CommandFailed(f"{what}: {argv[0]} is not installed") from exc
    if check and done.returncode != 0:
        raise CommandFailed(f"{what}: {one_line(done.stderr or done.stdout) or f'exit {done.returncode}'}")
    return done


def one_line(text: str) -> str:
    return " ".join(text.split())
