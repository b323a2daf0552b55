"""Docker's start/die events of server containers, followed by a thread.

Each call to Docker asks for the events of a short window (``until`` a
moment ahead), so every call ends by itself and the thread notices a stop
request within one window; the windows are contiguous, so nothing is missed,
and an event seen twice at a window's edge is delivered once.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from astrostack_localcloud import naming

from .containers import Docker
from .errors import HypervisorError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerEvent:
    instance_uuid: str
    action: str               # start, die
    exit_code: int = 0
    time_ns: int = 0
    hypervisor: str = ""      # the container's LABEL_HYPERVISOR


def parse_event(raw: dict) -> ContainerEvent | None:
    """A server container's event, or None for anything else."""
    attributes = (raw.get("Actor") or {}).get("Attributes") or {}
    instance_uuid = attributes.get(naming.LABEL_INSTANCE)
    action = raw.get("Action") or raw.get("status")
    if not instance_uuid or action not in ("start", "die"):
        return None
    return ContainerEvent(instance_uuid, action, int(attributes.get("exitCode") or 0), int(raw.get("timeNano") or 0),
                          attributes.get(naming.LABEL_HYPERVISOR, ""))


class EventFollower:
    """Calls ``callback(event)`` for every start and die of a server container, from its own thread."""

    def __init__(self, docker: Docker, callback: Callable[[ContainerEvent], None], window_s: float = 2.0,
                 clock: Callable[[], float] = time.time):
        self.docker, self.callback, self.window_s, self.clock = docker, callback, window_s, clock
        self._stop = threading.Event()
        self._seen: collections.deque = collections.deque(maxlen=256)
        self._thread = threading.Thread(target=self._run, name="hv-docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.window_s + self.docker.timeout_s)

    def _run(self) -> None:
        since = self.clock()
        while not self._stop.is_set():
            until = self.clock() + self.window_s
            try:
                for raw in self.docker.events(since, until):
                    self._deliver(raw)
            except HypervisorError as exc:
                LOG.warning("Docker events between %.1f and %.1f: %s", since, until, exc)
                self._stop.wait(self.window_s)
                continue          # the same window again: duplicates are dropped
            since = until

    def _deliver(self, raw: dict) -> None:
        event = parse_event(raw)
        if event is None:
            return
        key = (event.instance_uuid, event.action, event.time_ns)
        if key in self._seen:
            return
        self._seen.append(key)
        try:
            self.callback(event)
        except Exception:  # one bad event must not end the thread that watches all VMs
            LOG.exception("handling %s of instance %s", event.action, event.instance_uuid)
