"""MPI mode: one MPI container (`astro-mpi`, host network, sshd on 2222) per
host, no Swarm. Each host's nodes.sh reports on the share
(`.astrostack/nodes-<host>.json`: state, reason, ip); the hostfile lists the
hosts' private addresses with their share of the ranks, the manager first."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from astrostack.cluster.access import ManagerAccess
from astrostack.spec import ClusterSpec

CONTAINER = "astro-mpi"
SSH_PORT = 2222  # the MPI containers' sshd on the hosts' network (cloud_init/scripts/nodes.sh)


@dataclass
class HostsView:
    running: dict[str, str] = field(default_factory=dict)  # host id -> ip
    failures: list[str] = field(default_factory=list)


def view_script(spec: ClusterSpec) -> str:
    return f"cat {spec.nfs.mount_point}/.astrostack/nodes-*.json 2>/dev/null; true"


def parse_view(output: str) -> HostsView:
    view = HostsView()
    for line in output.splitlines():
        try:
            status = json.loads(line)
        except ValueError:
            continue
        if status.get("state") == "running":
            view.running[status["host"]] = status.get("ip", "")
        elif status.get("state") == "failed":
            view.failures.append(f"{status.get('host')}: {status.get('reason')}")
    return view


def observe(spec: ClusterSpec, access: ManagerAccess) -> HostsView:
    return parse_view(access.run(view_script(spec), timeout=60).output)


def forget_hosts(spec: ClusterSpec, access: ManagerAccess, hosts: list[str]) -> None:
    """Removed hosts' reports leave the share: no hostfile lists a gone host."""
    if hosts:
        files = " ".join(f"{spec.nfs.mount_point}/.astrostack/nodes-{host}.json" for host in hosts)
        access.run(f"rm -f {files}", timeout=60)


def hostfile_lines(spec: ClusterSpec, view: HostsView) -> list[str]:
    """Manager first, then workers by index; slots = each host's ranks."""
    order = [host for host in spec.host_names() if host in view.running]
    ranks = dict(zip(spec.host_names(), spec.ranks_per_host()))
    return [f"{view.running[host]} slots={ranks[host]}" for host in order]
