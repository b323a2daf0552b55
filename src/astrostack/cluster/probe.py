"""Readiness of the nodes, fed to the monitor: hosts are Swarm nodes
Ready/Active, nodes are running tasks, and an `mpirun -np <nodes>` smoke
test across all of them must succeed before the cluster is "ready". A task
queue's nodes are its Dask worker processes registered with the scheduler,
and its smoke test a task mapped on every one of them and the Redis stores
written and read back."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any, Optional

from astrostack.cluster import dask as task_queue
from astrostack.cluster import mpi as mpi_mode
from astrostack.cluster import swarm
from astrostack.cluster.access import ClusterAccessError, ManagerAccess
from astrostack.probe import NodeView
from astrostack.spec import ClusterSpec, Mode

SMOKE_PROGRAM = ["/usr/local/bin/mpi_smoke"]
# mpirun's start-up grows with the ranks (one ssh and orted per container): the
# smoke test may take this long before it counts as "not yet ok" and is retried.
SMOKE_BASE_S = 120
SMOKE_PER_NODE_S = 1.0
# ... but it ends this long before the nodes deadline (the probe's ssh round trip
# and the monitor's last look), and is given at least this long.
SMOKE_MARGIN_S = 10.0
SMOKE_MIN_S = 20.0


@dataclass(frozen=True)
class Liveness:
    hosts_ready: int
    nodes_ready: int
    detail: str


def liveness(spec: ClusterSpec, access: ManagerAccess) -> Liveness:
    """Hosts and nodes as they are now, from one look through the manager (no smoke test)."""
    if spec.is_task_queue:
        queue = task_queue.observe(spec, access)
        return Liveness(len(queue.reports.running), queue.workers,
                        f"task queue: {len(queue.reports.running)}/{spec.hosts} hosts run their containers, "
                        f"{queue.workers}/{spec.nodes} Dask workers registered"
                        + (f"; {queue.scheduler_error}" if queue.scheduler_error else ""))
    if spec.mode is Mode.swarm:
        view = swarm.observe(spec, access)
        return Liveness(view.nodes_ready, view.tasks_running,
                        f"swarm: {view.nodes_ready}/{spec.hosts} hosts Ready, {view.tasks_running}/{spec.nodes} tasks running"
                        + (f"; {view.task_errors[-1]}" if view.task_errors else ""))
    hosts = mpi_mode.observe(spec, access)
    ranks = dict(zip(spec.host_names(), spec.ranks_per_host()))
    return Liveness(len(hosts.running), sum(ranks.get(h, 0) for h in hosts.running),
                    f"mpi: {len(hosts.running)}/{spec.hosts} hosts run their MPI container")


def probe_for(spec: ClusterSpec, access: ManagerAccess) -> SwarmNodeProbe | MpiNodeProbe | TaskQueueProbe:
    """The node probe of the spec's kind and mode, looking at the cluster through ACCESS."""
    if spec.is_task_queue:
        return TaskQueueProbe(spec, access)
    return SwarmNodeProbe(spec, access) if spec.mode is Mode.swarm else MpiNodeProbe(spec, access)


class SwarmNodeProbe:
    """One round trip to the manager per poll; the smoke test once all run."""

    def __init__(self, spec: ClusterSpec, access: ManagerAccess, smoke_program: list[str] = SMOKE_PROGRAM):
        self.spec = spec
        self.access = access
        self.smoke_program = smoke_program
        self.smoke_result: Optional[dict[str, Any]] = None

    def observe_nodes(self, time_left: Optional[float] = None) -> NodeView:
        """What the nodes are now; a manager that does not answer (yet, or for a while)
        is not a failure: the monitor asks again until the nodes deadline."""
        try:
            return self._observe(time_left)
        except ClusterAccessError as exc:
            return NodeView(ready=0, requests=1, detail=f"manager not reachable yet: {exc}")

    def _observe(self, time_left: Optional[float]) -> NodeView:
        view = swarm.observe(self.spec, self.access)
        fatal = view.fatal_error
        if fatal:
            return NodeView(ready=view.tasks_running, failure=fatal, requests=1)
        detail = f"swarm: {view.nodes_ready}/{self.spec.hosts} hosts, {view.tasks_running}/{self.spec.nodes} tasks running"
        if view.tasks_running < self.spec.nodes or view.nodes_ready < self.spec.hosts:
            return NodeView(ready=0, smoke_ok=None, requests=1, detail=detail)
        lines = swarm.write_hostfile(self.spec, self.access)
        if len(lines) != self.spec.nodes:
            return NodeView(ready=0, requests=2, detail=f"hostfile has {len(lines)} of {self.spec.nodes} nodes "
                                                        "(overlay endpoints still settling)")
        up = swarm.answering(self.spec, self.access, lines)
        if up < self.spec.nodes:
            return NodeView(ready=up, requests=3, detail=f"{up}/{self.spec.nodes} nodes answer (sshd), "
                                                         f"{view.tasks_running} tasks running")
        smoke_ok, smoke_detail = self._smoke(time_left)
        return NodeView(ready=up, smoke_ok=smoke_ok, requests=4, detail=smoke_detail)

    def _smoke(self, time_left: Optional[float]) -> tuple[bool, str]:
        summary, detail = smoke_test(self.spec, self.access, self.smoke_program, time_left)
        if summary is None:
            return False, detail
        self.smoke_result = summary
        return True, f"mpirun -np {self.spec.nodes} smoke test ok across {len(set(summary.get('hosts', [])))} containers"


def smoke_timeout(spec: ClusterSpec, time_left: Optional[float] = None) -> float:
    """How long one smoke test may run: its own allowance, and never past the phase's deadline."""
    allowance = SMOKE_BASE_S + SMOKE_PER_NODE_S * spec.nodes
    if time_left is None:
        return allowance
    return max(SMOKE_MIN_S, min(allowance, time_left - SMOKE_MARGIN_S))


def smoke_test(spec: ClusterSpec, access: ManagerAccess, program: list[str],
               time_left: Optional[float] = None) -> tuple[Optional[dict[str, Any]], str]:
    """`mpirun -np <nodes> PROGRAM` in the master: its JSON summary if every rank took part,
    else None and why. A smoke test that hangs is stopped inside the container and, like one
    that fails, is only "not yet ok": the monitor tries again until the nodes deadline."""
    seconds = smoke_timeout(spec, time_left)
    # Its ranks mostly wait on each other: mpi_smoke sleeps while it waits, and yields (mpirun_argv).
    argv = ["timeout", "-k", "5", f"{seconds:.0f}", *swarm.mpirun_argv(spec, program, yield_when_idle=True)]
    try:
        result = swarm.run_in_master(spec, access, argv, timeout=seconds + 30)
    except ClusterAccessError as exc:
        return None, f"mpirun smoke test not yet ok: {exc}"
    summary = _last_json_line(result.output)
    if result.ok and summary and summary.get("size") == spec.nodes:
        return summary, "ok"
    why = f"stopped after {seconds:.0f} s" if result.exit_code == 124 else f"exit {result.exit_code}"
    return None, f"mpirun smoke test not yet ok ({why}): {result.output.strip()[-200:]}"


EVIDENCE_TIMEOUT_S = 60


def evidence_script(spec: ClusterSpec) -> str:
    """Shell for the manager: what the cluster itself says (every host's report on the
    share, the Swarm's nodes, services and recent task states, the manager's containers)."""
    master, worker = swarm.service_names(spec)
    control = shlex.quote(f"{spec.nfs.mount_point}/.astrostack")
    return f"""
echo '## host reports on the share'; for f in {control}/nodes-*.json; do [ -f "$f" ] && cat "$f"; done
echo '## docker node ls'; docker node ls 2>&1 | head -n 60
echo '## docker service ls'; docker service ls 2>&1 | head -n 20
echo '## tasks by state (current, desired, error)'; docker service ps --no-trunc --format '{{{{.CurrentState}}}}|{{{{.DesiredState}}}}|{{{{.Error}}}}' {master} {worker} 2>/dev/null | sed -E 's/ [0-9a-z ]+ ago[|]/|/' | sort | uniq -c | sort -rn | head -n 20
echo '## docker service ps (last 80)'; docker service ps --no-trunc {master} {worker} 2>&1 | tail -n 80
echo '## the engine on the manager: nodes down, heartbeats, task moves (last 40)'; journalctl -u docker --no-pager -o cat 2>/dev/null | grep -Ei 'heartbeat|node.*(down|unknown)|orphan|reschedul' | tail -n 40
echo '## docker ps -a (manager)'; docker ps -a --no-trunc 2>&1 | head -n 40
true
"""


def cluster_snapshot(spec: ClusterSpec, access: ManagerAccess) -> str:
    """What evidence_script prints on the manager (bounded; for the evidence folder)."""
    return access.run(evidence_script(spec), timeout=EVIDENCE_TIMEOUT_S).output


def _last_json_line(output: str) -> Optional[dict[str, Any]]:
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


class MpiNodeProbe:
    """MPI mode: hosts whose MPI container runs (from the share), then the smoke test."""

    def __init__(self, spec: ClusterSpec, access: ManagerAccess, smoke_program: list[str] = SMOKE_PROGRAM):
        self.spec = spec
        self.access = access
        self.smoke_program = smoke_program

    def observe_nodes(self, time_left: Optional[float] = None) -> NodeView:
        """As SwarmNodeProbe's: a manager that does not answer is asked again."""
        try:
            return self._observe(time_left)
        except ClusterAccessError as exc:
            return NodeView(ready=0, requests=1, detail=f"manager not reachable yet: {exc}")

    def _observe(self, time_left: Optional[float]) -> NodeView:
        view = mpi_mode.observe(self.spec, self.access)
        ranks = dict(zip(self.spec.host_names(), self.spec.ranks_per_host()))
        ready = sum(ranks.get(host, 0) for host in view.running)
        if view.failures:
            return NodeView(ready=ready, failure=view.failures[0], requests=1)
        if len(view.running) < self.spec.hosts:
            return NodeView(ready=ready, requests=1,
                            detail=f"mpi: {len(view.running)}/{self.spec.hosts} hosts run their MPI container")
        lines = swarm.write_hostfile(self.spec, self.access)
        up_hosts = swarm.answering(self.spec, self.access, lines)
        if up_hosts < len(lines):
            return NodeView(ready=0, requests=3, detail=f"mpi: {up_hosts}/{len(lines)} hosts' MPI containers answer")
        summary, detail = smoke_test(self.spec, self.access, self.smoke_program, time_left)
        if summary is None:
            return NodeView(ready=ready, smoke_ok=False, requests=3, detail=detail)
        return NodeView(ready=ready, smoke_ok=True, requests=4,
                        detail=f"mpirun -np {self.spec.nodes} smoke test ok across {self.spec.hosts} hosts")


class TaskQueueProbe:
    """A task queue: every host's containers started (from the share), then exactly
    workers x processes Dask workers registered, then the smoke test; one round trip."""

    def __init__(self, spec: ClusterSpec, access: ManagerAccess):
        self.spec = spec
        self.access = access
        self.smoke_result: Optional[dict[str, Any]] = None

    def observe_nodes(self, time_left: Optional[float] = None) -> NodeView:
        try:
            view = task_queue.observe(self.spec, self.access, smoke=True)
        except ClusterAccessError as exc:
            return NodeView(ready=0, requests=1, detail=f"manager not reachable yet: {exc}")
        if view.reports.failures:
            return NodeView(ready=view.workers, failure=view.reports.failures[0], requests=1)
        expected = self.spec.nodes
        detail = (f"task queue: {len(view.reports.running)}/{self.spec.hosts} hosts run their containers, "
                  f"{view.workers}/{expected} Dask workers registered")
        if view.scheduler_error and len(view.reports.running) == self.spec.hosts:
            detail += f" ({view.scheduler_error})"
        if view.workers != expected or view.smoke is None:
            if view.workers > expected:
                detail += " (waiting for removed workers to leave the scheduler)"
            return NodeView(ready=min(view.workers, expected) if view.workers != expected else 0, requests=1,
                            detail=detail)
        if view.smoke_ok:
            self.smoke_result = view.smoke
            return NodeView(ready=view.workers, smoke_ok=True, requests=1,
                            detail=f"task queue: {expected} Dask workers registered, a smoke task ran on each "
                                   f"and {len(view.smoke.get('redis', {}))} Redis store(s) answer")
        return NodeView(ready=view.workers, smoke_ok=False, requests=1,
                        detail=f"task-queue smoke test not yet ok: {view.smoke}")
