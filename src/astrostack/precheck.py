"""Pre-checks on a real cloud, before anything is created: the image,
flavors, external network and keypair exist, and the project's quotas hold
the plan (instances, cores, RAM, floating IPs, ports, security groups and
rules, volumes, gigabytes) — the commonest cause of stacks stuck half-built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openstack import exceptions as os_exc

from astrostack.errors import CloudError, PrecheckFailed
from astrostack.spec import ClusterSpec

# Security-group rules in cluster.yaml, plus the two egress rules Neutron adds to each group.
SECURITY_GROUPS = 3
SECURITY_GROUP_RULES = 8 + 2 + 5 + 2 * SECURITY_GROUPS


@dataclass(frozen=True)
class Need:
    resource: str
    needed: int
    free: int  # -1: unlimited

    @property
    def ok(self) -> bool:
        return self.free < 0 or self.needed <= self.free


def precheck(spec: ClusterSpec, conn: Any) -> list[Need]:
    """Raise :class:`PrecheckFailed` naming the first missing thing or quota."""
    try:
        flavors = _check_names(spec, conn)
        needs = plan_needs(spec, flavors)
        free = free_quota(conn)
    except os_exc.SDKException as exc:
        raise CloudError(f"pre-check: the cloud answered: {' '.join(str(exc).split())}") from None
    checked = [Need(resource, needed, free.get(resource, -1)) for resource, needed in needs.items()]
    short = [n for n in checked if not n.ok]
    if short:
        first = short[0]
        others = f" (and {len(short) - 1} more)" if len(short) > 1 else ""
        raise PrecheckFailed(f"quota: {first.resource} needs {first.needed}, {first.free} free{others}",
                             hint="ask your cloud admin or shrink hosts")
    return checked


def _check_names(spec: ClusterSpec, conn: Any) -> dict[str, Any]:
    servers = spec.servers
    for role in ("manager", "worker", "nfs"):
        image = getattr(servers, role).image or servers.image
        if conn.image.find_image(image) is None:
            raise PrecheckFailed(f"servers.{role}.image: no image {image!r} in cloud {spec.cloud}")
    flavors = {}
    for role in ("manager", "worker", "nfs"):
        name = getattr(servers, role).flavor
        flavor = conn.compute.find_flavor(name)
        if flavor is None:
            raise PrecheckFailed(f"servers.{role}.flavor: no flavor {name!r} in cloud {spec.cloud}")
        flavors[role] = flavor
    network = conn.network.find_network(spec.network.external)
    if network is None:
        raise PrecheckFailed(f"network.external: no network {spec.network.external!r} in cloud {spec.cloud}")
    if not getattr(network, "is_router_external", True):
        raise PrecheckFailed(f"network.external: {spec.network.external!r} is not an external network")
    if spec.ssh.keypair and conn.compute.find_keypair(spec.ssh.keypair) is None:
        raise PrecheckFailed(f"ssh.keypair: no keypair {spec.ssh.keypair!r} in cloud {spec.cloud}")
    return flavors


def plan_needs(spec: ClusterSpec, flavors: dict[str, Any]) -> dict[str, int]:
    manager, worker, nfs = flavors["manager"], flavors["worker"], flavors["nfs"]
    return {
        "instances": spec.hosts + 1,
        "cores": manager.vcpus + worker.vcpus * spec.workers + nfs.vcpus,
        "ram": manager.ram + worker.ram * spec.workers + nfs.ram,
        "floating_ips": 1,
        "ports": spec.hosts + 1 + 3,  # hosts, NFS, router interface, DHCP, gateway
        "networks": 1,
        "routers": 1,
        "security_groups": SECURITY_GROUPS,
        "security_group_rules": SECURITY_GROUP_RULES,
        "volumes": 1,
        "gigabytes": spec.nfs.volume_size_gb,
    }


def free_quota(conn: Any) -> dict[str, int]:
    """What the project may still create, from Nova's and Cinder's absolute
    limits and Neutron's detailed quota (-1: unlimited)."""
    free: dict[str, int] = {}
    compute = conn.compute.get_limits().absolute
    free["instances"] = _left(compute.instances, compute.instances_used)
    free["cores"] = _left(compute.total_cores, compute.total_cores_used)
    free["ram"] = _left(compute.total_ram, compute.total_ram_used)
    volume = conn.block_storage.get_limits().absolute
    free["volumes"] = _left(volume.max_total_volumes, volume.total_volumes_used)
    free["gigabytes"] = _left(volume.max_total_volume_gigabytes, volume.total_gigabytes_used)
    project = conn.current_project_id
    quota = conn.network.get_quota(project, details=True)
    for ours, theirs in (("floating_ips", "floating_ips"), ("ports", "ports"), ("networks", "networks"),
                         ("routers", "routers"), ("security_groups", "security_groups"),
                         ("security_group_rules", "security_group_rules")):
        detail = getattr(quota, theirs, None) or {}
        free[ours] = _left(detail.get("limit", -1), detail.get("used", 0) + detail.get("reserved", 0))
    return free


def _left(limit: int | None, used: int | None) -> int:
    if limit is None or limit < 0:
        return -1
    return max(0, limit - (used or 0))


def console_logs(cluster: str, conn: Any, length: int = 200) -> dict[str, str]:
    """The console output of each of the cluster's servers (real clouds)."""
    logs = {}
    for server in conn.compute.servers(details=True, name=f"^{cluster}-"):
        if (server.metadata or {}).get("astrostack_cluster") != cluster:
            continue
        try:
            logs[server.name] = conn.compute.get_server_console_output(server, length=length).get("output", "")
        except os_exc.SDKException as exc:
            logs[server.name] = f"(console output unavailable: {exc})"
    return logs
