"""Run one command of the control plane with a deadline; a failure is a LocalCloudError.

Output goes to a log file when one is given (the error names it), else it is
captured and its tail ends up in the one-line error.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from astrostack.errors import LocalCloudError

Progress = Callable[[str], None]
TAIL_LINES = 6
HEARTBEAT_S = 15.0
POLL_S = 0.25


def run(argv: list[str], what: str, *, timeout: float, env: Optional[dict] = None,
        log: Optional[Path] = None, stdin_text: Optional[str] = None, say: Optional[Progress] = None) -> str:
    """Run argv to completion; return its stdout (when no log file is used).

    With a log file and ``say``, a line every HEARTBEAT_S seconds tells that
    the command still runs and what it logged last (no silent minute).
    """
    try:
        if log is not None:
            return _run_logged(argv, what, timeout=timeout, env=env, log=log, say=say)
        done = subprocess.run(argv, input=stdin_text, capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LocalCloudError(f"{what}: no result after {timeout:.0f} s", hint=_log_hint(log)) from exc
    except OSError as exc:
        raise LocalCloudError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise LocalCloudError(f"{what} failed (exit {done.returncode}): "
                              f"{tail_text(done.stderr or done.stdout or '')}")
    return done.stdout


def _run_logged(argv: list[str], what: str, *, timeout: float, env: Optional[dict], log: Path,
                say: Optional[Progress]) -> str:
    started = time.monotonic()
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            code = _wait_with_heartbeat(process, what, started + timeout, log, say)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    if code != 0:
        raise LocalCloudError(f"{what} failed (exit {code}): {log_tail(log)}", hint=_log_hint(log))
    return ""


def _wait_with_heartbeat(process: subprocess.Popen, what: str, deadline: float, log: Path,
                         say: Optional[Progress]) -> int:
    started = time.monotonic()
    next_beat = started + HEARTBEAT_S
    while process.poll() is None:
        now = time.monotonic()
        if now >= deadline:
            raise subprocess.TimeoutExpired(process.args, deadline - started)
        if say is not None and now >= next_beat:
            say(f"  ... {what}: {now - started:.0f} s, last: {log_tail(log, 1)[:100]}")
            next_beat = now + HEARTBEAT_S
        time.sleep(POLL_S)
    return process.returncode


def _log_hint(log: Optional[Path]) -> Optional[str]:
    return f"log: {log}" if log else None


def tail_text(text: str, lines: int = TAIL_LINES) -> str:
    """The last non-empty lines of a text, joined on ' | ' to stay one line."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(no output)"


def log_tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log file, one line; reads only the file's end."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc.strerror})"
    return tail_text(text, lines)


def succeeds(argv: list[str], *, timeout: float) -> bool:
    """True if the command exits 0 (for checks such as ``iptables -C``)."""
    try:
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
