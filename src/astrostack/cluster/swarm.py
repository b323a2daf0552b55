"""Swarm mode: what the manager knows about nodes and tasks, the MPI
hostfile built from the Swarm's own task list (not from DNS guesses), and
running a command in the master container."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from astrostack.cluster import mpi as mpi_mode
from astrostack.cluster.access import ClusterAccessError, ManagerAccess, Result, Sink
from astrostack.spec import ClusterSpec, Mode

# Task errors that will not heal by waiting: fail at once with the error.
FATAL_TASK_ERRORS = ("No such image", "manifest unknown", "pull access denied", "repository does not exist",
                     "invalid reference format", "no suitable node")
HOSTFILE = ".astrostack/hostfile"


@dataclass
class SwarmView:
    nodes_ready: int = 0
    tasks_running: int = 0
    task_errors: list[str] = field(default_factory=list)
    services_state: dict[str, Any] = field(default_factory=dict)

    @property
    def fatal_error(self) -> str | None:
        for error in self.task_errors:
            if any(marker in error for marker in FATAL_TASK_ERRORS):
                return error
        if self.services_state.get("state") == "failed":
            return f"starting the containers failed on the manager: {self.services_state.get('reason')}"
        return None


def drain(access: ManagerAccess, nodes: list[str]) -> None:
    """Move the tasks off NODES (Swarm node names are the VMs' hostnames) before they go."""
    names = " ".join(shlex.quote(n) for n in nodes)
    access.run(f"for n in {names}; do docker node update --availability drain \"$n\" >/dev/null 2>&1 || true; done",
               timeout=120)


def forget_nodes(access: ManagerAccess, nodes: list[str]) -> None:
    """Remove NODES (gone VMs) from the Swarm, so no Down node lingers."""
    if nodes:
        names = " ".join(shlex.quote(n) for n in nodes)
        access.run(f"for n in {names}; do docker node rm --force \"$n\" >/dev/null 2>&1 || true; done", timeout=120)


def scale_workers(spec: ClusterSpec, access: ManagerAccess) -> None:
    """The worker service runs NODES - 1 tasks (the master is the other one)."""
    _, worker = service_names(spec)
    result = access.run(f"docker service scale --detach {worker}={spec.nodes - 1}", timeout=120)
    if not result.ok:
        raise ClusterAccessError(f"docker service scale {worker}={spec.nodes - 1}: {result.output.strip()[-200:]}")


def service_names(spec: ClusterSpec) -> tuple[str, str]:
    return f"{spec.name}-master", f"{spec.name}-worker"


def view_script(spec: ClusterSpec) -> str:
    master, worker = service_names(spec)
    status_file = f"{spec.nfs.mount_point}/.astrostack/nodes-manager.json"
    return f"""
docker node ls --format '{{{{json .}}}}' 2>/dev/null | sed 's/^/N /'
docker service ps --no-trunc --filter desired-state=running --format '{{{{json .}}}}' {master} {worker} 2>/dev/null | sed 's/^/T /'
docker service ps --no-trunc --format '{{{{json .}}}}' {master} {worker} 2>/dev/null | grep -E '"(Rejected|Failed)' | sed 's/^/E /' | tail -n 5
[ -f {status_file} ] && echo "S $(cat {status_file})"
true
"""


def parse_view(output: str) -> SwarmView:
    view = SwarmView()
    for line in output.splitlines():
        kind, _, payload = line.partition(" ")
        try:
            data = json.loads(payload) if payload.startswith("{") else None
        except ValueError:
            continue
        if data is None:
            continue
        if kind == "N" and data.get("Status") == "Ready" and data.get("Availability") == "Active":
            view.nodes_ready += 1
        elif kind == "T" and str(data.get("CurrentState", "")).startswith("Running"):
            view.tasks_running += 1
        elif kind in ("T", "E") and data.get("Error"):
            view.task_errors.append(f"{data.get('Name')}: {data['Error']}")
        elif kind == "S":
            view.services_state = data
    return view


def observe(spec: ClusterSpec, access: ManagerAccess) -> SwarmView:
    return parse_view(access.run(view_script(spec), timeout=60).output)


def task_addresses_script(spec: ClusterSpec) -> str:
    return f"docker network inspect --verbose {shlex.quote(spec.overlay.name)} --format '{{{{json .Services}}}}'"


def hostfile_lines(spec: ClusterSpec, services: dict[str, Any]) -> list[str]:
    """Master first, then the workers by slot: exactly `nodes` lines."""
    master, worker = service_names(spec)

    def addresses(service: str) -> list[str]:
        tasks = (services.get(service) or {}).get("Tasks") or []
        by_slot = sorted(tasks, key=lambda t: _slot(t.get("Name", "")))
        return [t["EndpointIP"] for t in by_slot if t.get("EndpointIP")]

    slots = spec.application.slots_per_node
    return [f"{ip} slots={slots}" for ip in addresses(master) + addresses(worker)]


def _slot(task_name: str) -> int:
    parts = task_name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def write_hostfile(spec: ClusterSpec, access: ManagerAccess) -> list[str]:
    """The MPI hostfile on the share: Swarm tasks (swarm mode) or hosts (mpi mode)."""
    if spec.mode is Mode.mpi:
        lines = mpi_mode.hostfile_lines(spec, mpi_mode.observe(spec, access))
    else:
        services = json.loads(access.run(task_addresses_script(spec), timeout=60).output.strip() or "{}") or {}
        lines = hostfile_lines(spec, services)
    target = f"{spec.nfs.mount_point}/{HOSTFILE}"
    access.run(f"cat > {shlex.quote(target)}.tmp && mv {shlex.quote(target)}.tmp {shlex.quote(target)}",
               stdin="\n".join(lines) + "\n")
    return lines


def master_exec_script(spec: ClusterSpec, command: list[str]) -> str:
    """Shell, run on the manager, that execs COMMAND in the master container."""
    master, _ = service_names(spec)
    inner = " ".join(shlex.quote(part) for part in command)
    find = (f"docker ps -q --filter name=^{mpi_mode.CONTAINER}$" if spec.mode is Mode.mpi
            else f"docker ps -q --filter label=com.docker.swarm.service.name={master}")
    return (
        f"c=$({find} | head -n1); "
        f'[ -n "$c" ] || {{ echo "no running master container of {spec.name}" >&2; exit 125; }}; '
        f'exec docker exec -i "$c" bash -lc {shlex.quote(inner)}'
    )


def answering_script(addresses: list[str], port: int) -> str:
    """Shell, run in the master container, printing `UP ADDRESS` for every node whose
    sshd accepts a connection (all tried at once, 3 s each)."""
    quoted = " ".join(shlex.quote(a) for a in addresses)
    return (f"for ip in {quoted}; do (timeout 3 bash -c \"exec 3<>/dev/tcp/$ip/{port}\" 2>/dev/null "
            f"&& echo \"UP $ip\") & done; wait")


def answering(spec: ClusterSpec, access: ManagerAccess, hostfile: list[str]) -> int:
    """How many of the hostfile's nodes answer: their name resolved (an address in the
    hostfile) and their sshd accepts, as mpirun needs before it starts."""
    addresses = sorted({line.split()[0] for line in hostfile})
    result = run_in_master(spec, access, ["bash", "-c", answering_script(addresses, ssh_port(spec))], timeout=60)
    up = {line.split()[1] for line in result.output.splitlines() if line.startswith("UP ")}
    return sum(1 for line in hostfile if line.split()[0] in up)


def ssh_port(spec: ClusterSpec) -> int:
    """The MPI containers' sshd: 22 on the overlay, 2222 on the hosts' network (mpi mode)."""
    return mpi_mode.SSH_PORT if spec.mode is Mode.mpi else 22


def mpirun_argv(spec: ClusterSpec, program: list[str], np: int | None = None,
                yield_when_idle: bool = False) -> list[str]:
    """mpirun across every node, on the overlay only (see LOCAL-CLOUD-FACTS);
    in mpi mode on the hosts' private network.

    Each container is a host of one slot to Open MPI, so it cannot see that
    several share a VM's vCPUs and lets every waiting rank spin. With
    ``yield_when_idle`` a waiting rank offers its CPU to the others between
    looks; it helps where the ranks of a host outnumber its vCPUs, but a
    yielding rank stays runnable (200 of them on 2 cores still took minutes),
    so mpi_smoke also sleeps while it waits."""
    cidr = spec.network.cidr if spec.mode is Mode.mpi else spec.overlay.subnet
    return [
        "mpirun", "--hostfile", f"/share/{HOSTFILE}", "-np", str(np or spec.nodes),
        "--mca", "btl_tcp_if_include", cidr, "--mca", "oob_tcp_if_include", cidr,
        *(["--mca", "mpi_yield_when_idle", "1"] if yield_when_idle else []),
        *program,
    ]


def run_in_master(spec: ClusterSpec, access: ManagerAccess, command: list[str], timeout: float) -> Result:
    return access.run(master_exec_script(spec, command), timeout=timeout)


def stream_in_master(spec: ClusterSpec, access: ManagerAccess, command: list[str], timeout: float,
                     sink: Sink) -> int:
    """COMMAND in the master container, its output passed to SINK as it comes; its exit code."""
    return access.stream(master_exec_script(spec, command), timeout=timeout, sink=sink)


class TailSink:
    """Keeps the last ``limit`` bytes of a stream (and passes every chunk on to ``then``)."""

    def __init__(self, limit: int = 4000, then: Sink | None = None):
        self.limit = limit
        self.then = then
        self.buffer = bytearray()

    def __call__(self, chunk: bytes) -> None:
        self.buffer += chunk
        del self.buffer[:-self.limit]
        if self.then is not None:
            self.then(chunk)

    def text(self) -> str:
        return self.buffer.decode(errors="replace")
