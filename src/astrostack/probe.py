"""What the monitor looks at, once per poll.

:class:`DeploymentProbe` combines three views, each with a bounded number of
requests whatever the number of hosts:

* Heat: the stack, its resources (one nested list) and the hosts' and the
  NFS server's wait-condition handles (4 requests);
* servers: one listing of the cluster's servers in Nova, to see a VM that
  died after it booted;
* nodes: a :class:`NodeProbe` (Swarm tasks / MPI containers + an mpirun
  smoke test, from :mod:`astrostack.cluster`), asked only in the nodes phase.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, TypeVar

from astrostack import marks
from astrostack import stack as heat_stack
from astrostack.errors import CloudError
from astrostack.monitor import HOSTS, NODES, Observation
from astrostack.retry import SDK_ERRORS, call_with_retry
from astrostack.spec import server_name
from astrostack.stack import Heat, StackRef

T = TypeVar("T")


@dataclass(frozen=True)
class NodeView:
    ready: int
    failure: Optional[str] = None
    smoke_ok: Optional[bool] = None
    requests: int = 0
    detail: str = ""


class NodeProbe(Protocol):
    def observe_nodes(self, time_left: Optional[float] = None) -> NodeView:
        """The nodes now; a smoke test run here ends within ``time_left`` seconds."""


# What a host prints on its console when it cannot reach Heat's signal URL
# (cloud_init/scripts/common.sh, `signal`): then it can tell nobody but the console.
SIGNAL_UNREACHABLE_MARKER = "ASTROSTACK-SIGNAL-UNREACHABLE"
CONSOLE_LOOK_EVERY_S = 30.0
# Polls further apart than this mean astrostack itself could not reach the cloud.
OUTAGE_GAP_S = 20.0
CONSOLE_LINES = 80


class ServerWatch(Protocol):
    def dead_servers(self) -> list[tuple[str, str]]:
        """(server name, reason) of the cluster's servers that stopped."""

    def cannot_signal(self, hosts: Sequence[str]) -> dict[str, SignalTrouble]:
        """HOSTS whose console says they fail to reach Heat's signal URL, and how far they are."""


class NoServerWatch:
    def dead_servers(self) -> list[tuple[str, str]]:
        return []

    def cannot_signal(self, hosts: Sequence[str]) -> dict[str, SignalTrouble]:
        return {}


@dataclass(frozen=True)
class SignalTrouble:
    """Why a host's console says it cannot signal Heat: its last failed try
    (``attempt``), or, ``final``, a state it cannot leave (no user data)."""

    attempt: int
    why: str
    final: bool = False


def signal_unreachable(console: str) -> Optional[SignalTrouble]:
    """The last failed signal attempt a console shows (the marker's last line), if any."""
    lines = [line for line in console.splitlines() if SIGNAL_UNREACHABLE_MARKER in line]
    if not lines:
        return None
    counted, _, rest = lines[-1].split(SIGNAL_UNREACHABLE_MARKER, 1)[1].strip().partition(" ")
    attempt = counted.removeprefix("attempt=")
    url, _, error = rest.partition(" ")
    return SignalTrouble(int(attempt) if attempt.isdigit() else 0,
                         f"cannot reach Heat's signal URL {url} ({error or 'no answer'}): the VMs need a route to "
                         "Heat's API (an internal-only endpoint, a private CA, a DNS name they cannot resolve?)")


# What cloud-init prints when no datasource answered: the host has no user data,
# so it runs none of astrostack's scripts and never signals.
NO_DATASOURCE_LINE = "Datasource DataSourceNone"


def no_user_data(console: str) -> Optional[SignalTrouble]:
    """A host that booted without its metadata (cloud-init fell back to DataSourceNone)."""
    if NO_DATASOURCE_LINE not in console:
        return None
    return SignalTrouble(0, "cloud-init got no answer from the metadata service (169.254.169.254) and "
                            "booted without user data (DataSourceNone): it will never signal", final=True)


# Where cloud-init says it is done (its final module), whatever the scripts did.
CLOUD_INIT_FINISHED = re.compile(r"Cloud-init v\. \S+ finished at")
HOST_SCRIPT_LINE = re.compile(r"astrostack\[[^]]*\] (?:\d\d:\d\d:\d\d )?(.*)")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STORY_CHARS = 160


def silent_host_story(console: Optional[str]) -> str:
    """What a host that never signalled shows on its console, in a few words:
    the known troubles first, else the last thing astrostack's scripts said
    (and whether cloud-init ended after it), else the console's last line."""
    if console is None:
        return "no server in Nova (Heat had not created it yet)"
    text = ANSI_ESCAPE.sub("", console)
    trouble = no_user_data(text) or signal_unreachable(text)
    if trouble:
        return trouble.why
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "an empty console (the VM had not booted, or its console cannot be read)"
    said = [(i, m.group(1)) for i, line in enumerate(lines) if (m := HOST_SCRIPT_LINE.search(line))]
    if said:
        at, last = said[-1]
        ended = any(CLOUD_INIT_FINISHED.search(line) for line in lines[at + 1:])
        return f"its scripts last said {_clip(last)!r}" + (", then cloud-init finished" if ended else "")
    return f"its console ends {_clip(lines[-1])!r} (astrostack's scripts had not started)"


def _clip(text: str) -> str:
    return text if len(text) <= STORY_CHARS else text[:STORY_CHARS - 3] + "..."


class NovaServerWatch:
    """One `GET /servers/detail` filtered by name prefix; ERROR or SHUTOFF is dead."""

    def __init__(self, conn: Any, cluster: str):
        self.conn = conn
        self.cluster = cluster

    def dead_servers(self) -> list[tuple[str, str]]:
        dead = []
        for server in nova_call(lambda: list(self.conn.compute.servers(details=True, name=f"^{self.cluster}-"))):
            if (server.metadata or {}).get(marks.METADATA_KEY) != self.cluster:
                continue
            if server.status in ("ERROR", "SHUTOFF"):
                fault = (server.fault or {}).get("message", "") if hasattr(server, "fault") else ""
                dead.append((server.name, f"{server.status} {fault}".strip()))
        return dead

    def cannot_signal(self, hosts: Sequence[str]) -> dict[str, SignalTrouble]:
        names = {server_name(self.cluster, host): host for host in hosts}
        servers = [s for s in nova_call(lambda: list(self.conn.compute.servers(name=f"^{self.cluster}-")))
                   if s.name in names]
        found = {}
        for server in servers:
            output = nova_call(lambda server=server: console_so_far(self.conn, server, CONSOLE_LINES))
            trouble = no_user_data(output) or signal_unreachable(output)
            if trouble:
                found[names[server.name]] = trouble
        return found


def console_so_far(conn: Any, server: Any, length: int) -> str:
    """The server's console output; empty while it has none yet (Nova answers 404 "Guest
    does not have a console available" for a server that is still being built)."""
    from openstack.exceptions import NotFoundException

    try:
        return conn.compute.get_server_console_output(server, length=length).get("output", "") or ""
    except NotFoundException:
        return ""


def nova_call(call: Callable[[], T]) -> T:
    """One Nova request: transient errors retried, every SDK error one of ours."""
    try:
        return call_with_retry(call)
    except SDK_ERRORS as exc:
        raise CloudError(f"Nova: {' '.join(str(exc).split())}") from None


def nova_console_logs(cluster: str, conn: Any, length: int = 200) -> dict[str, str]:
    """The console output of each of the cluster's servers, as Nova tells it."""
    logs = {}
    for server in nova_call(lambda: list(conn.compute.servers(details=True, name=f"^{cluster}-"))):
        if (server.metadata or {}).get(marks.METADATA_KEY) != cluster:
            continue
        try:
            logs[server.name] = conn.compute.get_server_console_output(server, length=length).get("output", "")
        except SDK_ERRORS as exc:
            logs[server.name] = f"(console output unavailable: {exc})"
    return logs


class DeploymentProbe:
    """Implements :class:`astrostack.monitor.Probe` for one stack."""

    def __init__(self, heat: Heat, ref: StackRef, *, servers: ServerWatch | None = None,
                 nodes: NodeProbe | None = None, host_ids: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic):
        self.heat = heat
        self.ref = ref
        self.servers = servers or NoServerWatch()
        self.nodes = nodes
        self.host_ids = list(host_ids)  # the signal ids hosts use: manager, worker-0, ...
        self.last_event: Optional[str] = None
        self.clock = clock
        self.consoles_seen_at: Optional[float] = None
        self.troubles_seen: dict[str, SignalTrouble] = {}
        self.observed_at: Optional[float] = None

    def observe(self, phase: str, *, time_left: Optional[float] = None) -> Observation:
        before = self.heat.requests
        status, reason = self.heat.status(self.ref)
        resources = self.heat.resources(self.ref)
        waits = heat_stack.host_waits(resources)
        done, total = heat_stack.count_resources(resources)
        node_view = self._nodes(phase, time_left)
        return Observation(
            stack_status=status,
            stack_reason=reason,
            resources_done=done,
            resources_total=total,
            hosts_signalled=len(waits.signalled),
            hosts_missing=[host for host in self.host_ids if host not in waits.signalled],
            host_failures=waits.failed + waits.nfs_failed + self._silent_because_cut_off(phase, waits.pending),
            failed_resources=heat_stack.failed_resources(  # the leaves: an aggregate fails with its child
                [r for r in resources if heat_stack.host_of_wait(r) is None and not heat_stack.is_aggregate(r)]),
            servers_in_error=self.servers.dead_servers(),
            nodes_ready=node_view.ready if node_view else 0,
            nodes_failure=node_view.failure if node_view else None,
            smoke_ok=node_view.smoke_ok if node_view else None,
            last_event=self._last_event(resources, node_view),
            requests=self.heat.requests - before + (node_view.requests if node_view else 0),
        )

    def _silent_because_cut_off(self, phase: str, pending: list[str]) -> list[tuple[str, str]]:
        """Every 30 s of the hosts phase, the consoles of (up to 5) silent hosts. A host
        that cannot reach Heat says so there; one that goes on failing from one look to
        the next while Heat answers astrostack all along cannot reach it at all, and the
        wait ends now, not at its deadline."""
        now = self.clock()
        outage = self.observed_at is not None and now - self.observed_at > OUTAGE_GAP_S
        self.observed_at = now
        if phase != HOSTS or not pending:
            return []
        if self.consoles_seen_at is None or outage:
            self.consoles_seen_at, self.troubles_seen = now, {}  # look afresh from 30 s on
            return []
        if now - self.consoles_seen_at < CONSOLE_LOOK_EVERY_S:
            return []
        self.consoles_seen_at = now
        troubles = self.servers.cannot_signal(pending[:5])
        still = [(host, trouble.why) for host, trouble in troubles.items()
                 if trouble.final
                 or (host in self.troubles_seen and trouble.attempt > self.troubles_seen[host].attempt)]
        self.troubles_seen = troubles
        return still

    def _nodes(self, phase: str, time_left: Optional[float]) -> Optional[NodeView]:
        if phase != NODES or self.nodes is None:
            return None
        return self.nodes.observe_nodes(time_left)

    def _last_event(self, resources: list[dict[str, Any]], node_view: Optional[NodeView]) -> Optional[str]:
        if node_view and node_view.detail:
            return node_view.detail
        latest = max(resources, key=lambda r: r.get("updated_time") or "", default=None)
        if latest:
            return f"{latest.get('resource_name')} {latest.get('resource_status')}"
        return None
