"""Find and delete what a cluster left behind when its stack is gone.

Every resource astrostack creates carries the cluster's mark
(:mod:`astrostack.marks`): tags on Neutron resources, metadata on servers and
volumes, the description of security groups and floating IPs, the name of
keypairs. A sweep lists by those marks only, so it never touches what another
cluster, a colleague or another tool owns. Deletions are what a tenant may do
(no admin-only force-delete): a volume is detached, then deleted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from openstack import exceptions as os_exc

from astrostack import marks
from astrostack.errors import CloudError
from astrostack.retry import SDK_ERRORS

VOLUME_DETACH_DEADLINE_S = 120
POLL_S = 2.0


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
    "server", "floating_ip", "volume", "port", "router", "subnet", "security_group", "network", "keypair",
]


def _mine(owner: str, cluster: Optional[str]) -> bool:
    return bool(owner) and (cluster is None or owner == cluster)


class OpenStackSweeper:
    """Any cloud, through openstacksdk."""

    def __init__(self, conn: Any, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.conn = conn
        self.clock = clock
        self.sleep = sleep

    def leftovers(self, cluster: str | None = None) -> list[Leftover]:
        try:
            return (self._servers(cluster) + self._floating_ips(cluster) + self._volumes(cluster)
                    + self._tagged(cluster) + self._security_groups(cluster) + self._keypairs(cluster))
        except SDK_ERRORS as exc:
            raise CloudError(f"listing leftovers: {' '.join(str(exc).split())}") from None

    def _servers(self, cluster: str | None) -> list[Leftover]:
        return [Leftover("server", s.id, s.name, owner) for s in self.conn.compute.servers(details=True)
                if _mine(owner := (s.metadata or {}).get(marks.METADATA_KEY, ""), cluster)]

    def _floating_ips(self, cluster: str | None) -> list[Leftover]:
        return [Leftover("floating_ip", f.id, f.floating_ip_address or f.id, owner) for f in self.conn.network.ips()
                if _mine(owner := marks.owner_from_description(f.description or ""), cluster)]

    def _volumes(self, cluster: str | None) -> list[Leftover]:
        return [Leftover("volume", v.id, v.name or v.id, owner) for v in self.conn.block_storage.volumes(details=True)
                if _mine(owner := (v.metadata or {}).get(marks.METADATA_KEY, ""), cluster)]

    def _tagged(self, cluster: str | None) -> list[Leftover]:
        out = []
        query = {"tags": marks.cluster_tag(cluster)} if cluster else {"tags": marks.GENERIC_TAG}
        for kind, lister in (("port", self.conn.network.ports), ("router", self.conn.network.routers),
                             ("subnet", self.conn.network.subnets), ("network", self.conn.network.networks)):
            for item in lister(**query):
                owner = marks.owner_from_tags(item.tags or [])
                if _mine(owner, cluster):
                    out.append(Leftover(kind, item.id, item.name or item.id, owner))
        return out

    def _security_groups(self, cluster: str | None) -> list[Leftover]:
        return [Leftover("security_group", g.id, g.name, owner) for g in self.conn.network.security_groups()
                if _mine(owner := marks.owner_from_description(g.description or ""), cluster)]

    def _keypairs(self, cluster: str | None) -> list[Leftover]:
        return [Leftover("keypair", k.name, k.name, owner) for k in self.conn.compute.keypairs()
                if _mine(owner := marks.owner_from_keypair(k.name), cluster)]

    def delete(self, item: Leftover) -> None:
        deleters = {
            "server": self.conn.compute.delete_server,
            "floating_ip": self.conn.network.delete_ip,
            "volume": self._detach_and_delete_volume,
            "port": self.conn.network.delete_port,
            "router": self._delete_router,
            "subnet": self.conn.network.delete_subnet,
            "security_group": self.conn.network.delete_security_group,
            "network": self.conn.network.delete_network,
            "keypair": self.conn.compute.delete_keypair,
        }
        try:
            deleters[item.kind](item.id)
        except os_exc.NotFoundException:
            return
        except SDK_ERRORS as exc:
            raise CloudError(f"cannot delete {item.kind} {item.name}: {' '.join(str(exc).split())}") from None

    def _detach_and_delete_volume(self, volume_id: str) -> None:
        volume = self.conn.block_storage.get_volume(volume_id)
        for attachment in volume.attachments or []:
            server_id = attachment.get("server_id")
            if server_id:
                self.conn.compute.delete_volume_attachment(server_id, volume_id, ignore_missing=True)
        self._wait_volume_free(volume_id)
        self.conn.block_storage.delete_volume(volume_id)

    def _wait_volume_free(self, volume_id: str) -> None:
        deadline = self.clock() + VOLUME_DETACH_DEADLINE_S
        while True:
            volume = self.conn.block_storage.get_volume(volume_id)
            if volume.status in ("available", "error", "error_deleting"):
                return
            if self.clock() >= deadline:
                raise CloudError(f"volume {volume.name or volume_id} still {volume.status} after "
                                 f"{VOLUME_DETACH_DEADLINE_S} s")
            self.sleep(POLL_S)

    def _delete_router(self, router_id: str) -> None:
        router = self.conn.network.get_router(router_id)
        for port in self.conn.network.ports(device_id=router_id, device_owner="network:router_interface"):
            for fixed in port.fixed_ips or []:
                self.conn.network.remove_interface_from_router(router, subnet_id=fixed["subnet_id"])
        self.conn.network.delete_router(router_id)
