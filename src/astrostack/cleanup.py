"""Find and delete what a cluster left behind when its stack is gone.

Every resource astrostack creates carries the cluster's name: Neutron tags
(`astrostack-cluster=NAME`), server and volume metadata
(`astrostack_cluster`), the floating IP's description, and on the local
cloud the Docker label `astrostack.cluster`. A sweep lists by those marks
only, so it never touches what another cluster (or another tool) owns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from astrostack.cloud import is_local
from astrostack.errors import CloudError

CLUSTER_TAG = "astrostack-cluster="
LOCAL_LABEL = "astrostack.cluster"
# Security groups cannot carry tags through Heat; cluster.yaml names them so.
SECURITY_GROUP_SUFFIXES = ("-members", "-manager-ssh", "-nfs")


def security_group_owner(name: str) -> str:
    """The cluster a security group of cluster.yaml belongs to, or ''."""
    for suffix in SECURITY_GROUP_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return ""


@dataclass(frozen=True)
class Leftover:
    kind: str
    id: str
    name: str
    cluster: str


@dataclass
class SweepResult:
    found: list[Leftover] = field(default_factory=list)
    deleted: list[Leftover] = field(default_factory=list)
    failed: list[tuple[Leftover, str]] = field(default_factory=list)


class Sweeper(Protocol):
    def leftovers(self, cluster: str | None = None) -> list[Leftover]: ...
    def delete(self, item: Leftover) -> None: ...


def sweeper_for(cloud: str, conn: Any = None) -> Sweeper:
    if is_local(cloud):
        return LocalSweeper()
    return OpenStackSweeper(conn)


def sweep(sweeper: Sweeper, cluster: str | None = None, *, live_clusters: set[str] = frozenset(),
          dry_run: bool = False) -> SweepResult:
    """Delete leftovers of CLUSTER (or of every cluster without a live stack)."""
    result = SweepResult()
    for item in sweeper.leftovers(cluster):
        if item.cluster in live_clusters:
            continue
        result.found.append(item)
    if dry_run:
        return result
    for item in sorted(result.found, key=lambda i: DELETE_ORDER.index(i.kind)):
        try:
            sweeper.delete(item)
            result.deleted.append(item)
        except CloudError as exc:
            result.failed.append((item, str(exc)))
    return result


# Servers first (they hold ports and volumes), networks last.
DELETE_ORDER = [
    "server", "container", "floating_ip", "volume", "docker_volume", "port",
    "router", "subnet", "security_group", "network", "docker_network", "keypair",
]


class LocalSweeper:
    """The local cloud: Docker containers, volumes and networks by label."""

    def __init__(self) -> None:
        import docker

        self.docker = docker.from_env(timeout=60)

    def leftovers(self, cluster: str | None = None) -> list[Leftover]:
        label = f"{LOCAL_LABEL}={cluster}" if cluster else LOCAL_LABEL
        found = []
        for container in self.docker.containers.list(all=True, filters={"label": label}):
            found.append(Leftover("container", container.id, container.name, container.labels.get(LOCAL_LABEL, "")))
        for volume in self.docker.volumes.list(filters={"label": label}):
            labels = volume.attrs.get("Labels") or {}
            found.append(Leftover("docker_volume", volume.name, volume.name, labels.get(LOCAL_LABEL, "")))
        for network in self.docker.networks.list(filters={"label": label}):
            labels = network.attrs.get("Labels") or {}
            found.append(Leftover("docker_network", network.id, network.name, labels.get(LOCAL_LABEL, "")))
        return found

    def delete(self, item: Leftover) -> None:
        import docker.errors

        try:
            if item.kind == "container":
                self.docker.api.remove_container(item.id, force=True, v=True)
            elif item.kind == "docker_volume":
                self.docker.api.remove_volume(item.id, force=True)
            elif item.kind == "docker_network":
                self.docker.api.remove_network(item.id)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise CloudError(f"cannot delete {item.kind} {item.name}: {exc.explanation or exc}") from None


class OpenStackSweeper:
    """A real cloud, through openstacksdk: tags, metadata and descriptions."""

    def __init__(self, conn: Any):
        self.conn = conn

    def leftovers(self, cluster: str | None = None) -> list[Leftover]:
        found: list[Leftover] = []
        found += self._servers(cluster)
        found += self._floating_ips(cluster)
        found += self._volumes(cluster)
        found += self._tagged(cluster)
        return found

    def _servers(self, cluster: str | None) -> list[Leftover]:
        out = []
        for server in self.conn.compute.servers(details=True):
            owner = (server.metadata or {}).get("astrostack_cluster")
            if owner and (cluster is None or owner == cluster):
                out.append(Leftover("server", server.id, server.name, owner))
        return out

    def _floating_ips(self, cluster: str | None) -> list[Leftover]:
        out = []
        for fip in self.conn.network.ips():
            description = fip.description or ""
            if description.startswith(CLUSTER_TAG):
                owner = description[len(CLUSTER_TAG):]
                if cluster is None or owner == cluster:
                    out.append(Leftover("floating_ip", fip.id, fip.floating_ip_address or fip.id, owner))
        return out

    def _volumes(self, cluster: str | None) -> list[Leftover]:
        out = []
        for volume in self.conn.block_storage.volumes(details=True):
            owner = (volume.metadata or {}).get("astrostack_cluster")
            if owner and (cluster is None or owner == cluster):
                out.append(Leftover("volume", volume.id, volume.name or volume.id, owner))
        return out

    def _tagged(self, cluster: str | None) -> list[Leftover]:
        out = []
        listings = (
            ("port", self.conn.network.ports),
            ("router", self.conn.network.routers),
            ("subnet", self.conn.network.subnets),
            ("network", self.conn.network.networks),
        )
        for kind, lister in listings:
            query = {"tags": f"{CLUSTER_TAG}{cluster}"} if cluster else {"tags": "astrostack"}
            for item in lister(**query):
                owner = next((t[len(CLUSTER_TAG):] for t in (item.tags or []) if t.startswith(CLUSTER_TAG)), "")
                out.append(Leftover(kind, item.id, item.name or item.id, owner))
        for group in self.conn.network.security_groups():
            owner = security_group_owner(group.name or "")
            if owner and (cluster is None or owner == cluster):
                out.append(Leftover("security_group", group.id, group.name, owner))
        return out

    def delete(self, item: Leftover) -> None:
        from openstack import exceptions as os_exc

        deleters = {
            "server": lambda i: self.conn.compute.delete_server(i, force=True),
            "floating_ip": self.conn.network.delete_ip,
            "volume": lambda i: self.conn.block_storage.delete_volume(i, force=True),
            "port": self.conn.network.delete_port,
            "router": self._delete_router,
            "subnet": self.conn.network.delete_subnet,
            "security_group": self.conn.network.delete_security_group,
            "network": self.conn.network.delete_network,
        }
        try:
            deleters[item.kind](item.id)
        except os_exc.NotFoundException:
            return
        except os_exc.SDKException as exc:
            raise CloudError(f"cannot delete {item.kind} {item.name}: {' '.join(str(exc).split())}") from None

    def _delete_router(self, router_id: str) -> None:
        router = self.conn.network.get_router(router_id)
        for port in self.conn.network.ports(device_id=router_id, device_owner="network:router_interface"):
            for fixed in port.fixed_ips or []:
                self.conn.network.remove_interface_from_router(router, subnet_id=fixed["subnet_id"])
        self.conn.network.delete_router(router_id)
