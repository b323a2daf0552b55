"""Pre-checks, before anything is created: the credentials can do what Heat
needs (trusts), the VMs could reach Heat's API to signal it (its endpoint is
not on loopback), the image is one astrostack's cloud-init runs on, flavors,
external network and keypair exist, and the project's quotas hold the plan
(instances, cores, RAM, floating IPs, ports, security groups and rules,
volumes, gigabytes) — the commonest causes of stacks stuck half-built.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

import yaml
from openstack import exceptions as os_exc

from astrostack import paths
from astrostack.errors import CloudError, PrecheckFailed
from astrostack.retry import SDK_ERRORS
from astrostack.spec import ClusterSpec

# Neutron adds two egress rules (IPv4, IPv6) to every new security group.
NEUTRON_DEFAULT_EGRESS_RULES = 2


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
        check_credentials(conn)
        check_signal_endpoint(conn)
        flavors = _check_names(spec, conn)
        needs = plan_needs(spec, flavors)
        free = free_quota(conn)
    except SDK_ERRORS as exc:
        raise CloudError(f"pre-check: the cloud answered: {' '.join(str(exc).split())}") from None
    checked = [Need(resource, needed, free.get(resource, -1)) for resource, needed in needs.items()]
    short = [n for n in checked if not n.ok]
    if short:
        first = short[0]
        others = f" (and {len(short) - 1} more)" if len(short) > 1 else ""
        raise PrecheckFailed(f"quota: {first.resource} needs {first.needed}, {first.free} free{others}",
                             hint="ask your cloud admin or shrink hosts")
    return checked


def check_credentials(conn: Any) -> None:
    """Heat creates a Keystone trust for every stack (its default deferred auth);
    a restricted application credential may not, and the stack would fail at
    its first resource: say so before, with what to create instead."""
    auth = conn.config.get_auth_args()
    credential = auth.get("application_credential_id") or auth.get("application_credential_name")
    if not credential:
        return
    try:
        found = conn.identity.find_application_credential(conn.current_user_id, credential, ignore_missing=True)
    except os_exc.HttpException:
        return  # this credential may not read itself: Heat will tell
    if found is not None and not found.unrestricted:
        raise PrecheckFailed(
            f"clouds.yaml: application credential {found.name!r} is restricted and cannot create the trust Heat "
            "needs for a stack",
            hint="create one Heat can use: `openstack application credential create --unrestricted NAME` "
                 "(or log in with a password)")


def check_signal_endpoint(conn: Any) -> None:
    """Each VM signals Heat at a URL under Heat's public endpoint: one on loopback
    (a cloud whose catalog names localhost) no VM can reach."""
    url = conn.endpoint_for("orchestration", interface="public")
    problem = unreachable_from_a_vm(url) if url else None
    if problem:
        raise PrecheckFailed(f"the orchestration (Heat) endpoint {url} {problem}: no VM could signal its wait "
                             "condition", hint="ask your cloud admin for a public Heat endpoint the servers can reach")


def unreachable_from_a_vm(url: str) -> Optional[str]:
    """Why no server could reach ``url`` whatever its network (None when one may)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return "names localhost"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a DNS name: the VMs may resolve it
    if address.is_loopback or address.is_unspecified:
        return f"is on {address}, this machine's own address"
    return None


# The host scripts use apt-get and Debian's package names.
SUPPORTED_DISTROS = ("debian", "ubuntu")


def _check_names(spec: ClusterSpec, conn: Any) -> dict[str, Any]:
    servers = spec.servers
    for role in ("manager", "worker", "nfs"):
        name = getattr(servers, role).image or servers.image
        image = conn.image.find_image(name)
        if image is None:
            raise PrecheckFailed(f"servers.{role}.image: no image {name!r} in cloud {spec.cloud}")
        distro = (getattr(image, "os_distro", None) or "").lower()
        if distro and distro not in SUPPORTED_DISTROS:
            raise PrecheckFailed(f"servers.{role}.image: {name!r} is {distro}; astrostack's cloud-init needs a "
                                 f"Debian-family image ({', '.join(SUPPORTED_DISTROS)})")
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
    groups, rules = security_group_plan(spec.mode.value, spec.kind.value)
    return {
        "instances": spec.hosts + 1,
        "cores": manager.vcpus + worker.vcpus * spec.workers + nfs.vcpus,
        "ram": manager.ram + worker.ram * spec.workers + nfs.ram,
        "floating_ips": 1,
        "ports": spec.hosts + 1 + 3,  # hosts, NFS, router interface, DHCP, gateway
        "networks": 1,
        "routers": 1,
        "security_groups": groups,
        "security_group_rules": rules,
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


def security_group_plan(mode: str, kind: str = "mpi-cluster") -> tuple[int, int]:
    """(security groups, their rules) heat_templates/cluster.yaml creates in MODE
    for a cluster of KIND, Neutron's default egress rules included: counted from
    the template itself."""
    template = yaml.safe_load((paths.heat_templates_dir() / "cluster.yaml").read_text())
    conditions = {"mpi_mode": mode == "mpi", "task_queue": kind == "task-queue"}
    groups = [r for r in template["resources"].values() if r["type"] == "OS::Neutron::SecurityGroup"]
    rules = sum(len(_evaluated(g["properties"].get("rules", []), conditions)) for g in groups)
    return len(groups), rules + NEUTRON_DEFAULT_EGRESS_RULES * len(groups)


def _evaluated(value: Any, conditions: dict[str, bool]) -> list[Any]:
    """A rules list with HOT's list_concat and if resolved."""
    if isinstance(value, dict) and "list_concat" in value:
        return [item for part in value["list_concat"] for item in _evaluated(part, conditions)]
    if isinstance(value, dict) and "if" in value:
        condition, when_true, when_false = value["if"]
        return _evaluated(when_true if conditions[condition] else when_false, conditions)
    return list(value)
