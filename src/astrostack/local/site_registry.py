"""The site registry (Debian's docker-registry on 172.24.4.1:5050) and this machine's trust in it.

The registry itself is a supervised service (``services.py``); here its
address goes into dockerd's ``insecure-registries`` (plain HTTP), and the
running daemon is told with SIGHUP, which reloads that setting.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

from astrostack.local import dockerd, layout

Progress = Callable[[str], None]
DOCKER_PID_FILE = Path("/var/run/docker.pid")


def trust(say: Progress, *, daemon_json: Path = dockerd.DAEMON_JSON, pid_file: Path = DOCKER_PID_FILE) -> bool:
    """Add the registry to daemon.json (if missing) and reload dockerd; True if it changed."""
    address = layout.registry_address()
    if not dockerd.add_insecure_registry(address, daemon_json=daemon_json, restart=False):
        return False
    pid = _dockerd_pid(pid_file)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    say(f"dockerd trusts the site registry {address} (insecure-registries, reloaded with SIGHUP)")
    return True


def _dockerd_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
