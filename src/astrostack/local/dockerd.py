"""Make sure a Docker engine answers on this machine.

Nothing starts ``dockerd`` on the test machines (no systemd), so the local
cloud starts it itself: detached, in its own session, logging under
:func:`astrostack.paths.local_dir`. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from astrostack import paths
from astrostack.errors import LocalCloudError

DAEMON_JSON = Path("/etc/docker/daemon.json")
POLL_S = 0.5
LOG_TAIL_LINES = 15


def docker_answers(timeout_s: float = 10) -> bool:
    """True when ``docker info`` reaches a running engine."""
    try:
        done = subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def dockerd_log_path() -> Path:
    """Where the dockerd started by astrostack writes its log."""
    return paths.local_dir() / "dockerd.log"


def ensure_dockerd(deadline_s: float = 60, *, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> bool:
    """Start ``dockerd`` unless an engine already answers; wait until it does.

    Returns True if this call started the daemon, False if one was running.
    Raises :class:`LocalCloudError` (with the log tail) if the daemon exits
    or does not answer within ``deadline_s`` seconds.
    """
    if docker_answers():
        return False
    process = _start_dockerd(dockerd_log_path())
    _wait_for_engine(process, deadline_s, sleep=sleep, clock=clock)
    return True


def _start_dockerd(log_path: Path) -> subprocess.Popen:
    """Launch dockerd detached (own session, stdin closed, log appended)."""
    binary = shutil.which("dockerd")
    if binary is None:
        raise LocalCloudError("dockerd is not installed",
                              hint="apt-get install -y docker.io")
    with open(log_path, "ab") as log:
        return subprocess.Popen([binary], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True)


def _wait_for_engine(process: subprocess.Popen, deadline_s: float, *,
                     sleep: Callable[[float], None],
                     clock: Callable[[], float]) -> None:
    """Poll ``docker info`` until it answers, the daemon exits, or time is up."""
    deadline = clock() + deadline_s
    while clock() < deadline:
        if docker_answers():
            return
        if process.poll() is not None:
            raise LocalCloudError(
                f"dockerd exited with code {process.returncode} while starting: "
                f"{_log_tail(dockerd_log_path())}",
                hint=f"see {dockerd_log_path()}")
        sleep(POLL_S)
    raise LocalCloudError(
        f"dockerd did not answer within {deadline_s:g} s: {_log_tail(dockerd_log_path())}",
        hint=f"see {dockerd_log_path()}")


def _log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, joined on ' | ' to stay one line."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc.strerror})"
    tail = [line.strip() for line in text.splitlines()[-lines:] if line.strip()]
    return " | ".join(tail) or "(empty log)"


def add_insecure_registry(address: str, *, daemon_json: Path = DAEMON_JSON,
                          restart: bool = False, deadline_s: float = 60) -> bool:
    """Trust a plain-HTTP registry (``host:port``) in daemon.json.

    Returns True if the file changed. The running daemon only reads the
    setting when it starts: nothing is restarted unless ``restart`` is True
    (then a daemon started by astrostack is stopped and started again).
    """
    config = _read_daemon_json(daemon_json)
    registries = list(config.get("insecure-registries", []))
    if address in registries:
        return False
    config["insecure-registries"] = registries + [address]
    daemon_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = daemon_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, daemon_json)
    if restart:
        restart_dockerd(deadline_s)
    return True


def _read_daemon_json(daemon_json: Path) -> dict:
    """The daemon configuration, or {} when there is none."""
    if not daemon_json.exists():
        return {}
    try:
        config = json.loads(daemon_json.read_text() or "{}")
    except json.JSONDecodeError as exc:
        raise LocalCloudError(f"{daemon_json} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise LocalCloudError(f"{daemon_json} must hold a JSON object")
    return config


def restart_dockerd(deadline_s: float = 60, *, sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> None:
    """Stop the running dockerd (by the pid in its pid file) and start it again."""
    pid = _dockerd_pid()
    if pid is not None:
        os.kill(pid, 15)
        deadline = clock() + deadline_s
        while _pid_alive(pid):
            if clock() >= deadline:
                raise LocalCloudError(f"dockerd (pid {pid}) did not stop within {deadline_s:g} s")
            sleep(POLL_S)
    ensure_dockerd(deadline_s, sleep=sleep, clock=clock)


def _dockerd_pid(pid_file: Path = Path("/var/run/docker.pid")) -> int | None:
    """The pid dockerd wrote at start, if any."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    """True while a process with that pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
