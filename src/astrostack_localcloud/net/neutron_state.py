"""What Neutron says: its JSON (ports, networks, subnets, routers, floating IPs,
security groups) as small frozen records, and the fetch of all of it.

The records keep only what the data plane uses. :func:`fetch_payload` is the
one place that talks to the API (openstacksdk, imported there so that this
module stays importable without it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ROUTER_INTERFACE_OWNERS = frozenset({
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
})
ROUTER_GATEWAY_OWNER = "network:router_gateway"
DHCP_OWNER = "network:dhcp"
FLOATING_IP_OWNER = "network:floatingip"
# Neutron never filters ports of its own services (routers, DHCP, ...).
NETWORK_OWNER_PREFIX = "network:"

COLLECTIONS = ("networks", "subnets", "ports", "routers", "floatingips", "security_groups")


class NeutronError(Exception):
    """The Neutron API failed or answered something unusable; the message names the call."""


@dataclass(frozen=True)
class FixedIp:
    subnet_id: str
    ip_address: str

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip_address).version


@dataclass(frozen=True)
class HostRoute:
    destination: str
    nexthop: str


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    mtu: int
    external: bool
    project_id: str
    network_type: str = ""


@dataclass(frozen=True)
class Subnet:
    id: str
    network_id: str
    cidr: str
    ip_version: int
    gateway_ip: str | None
    enable_dhcp: bool
    dns_nameservers: tuple[str, ...] = ()
    host_routes: tuple[HostRoute, ...] = ()

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.cidr, strict=False).prefixlen

    @property
    def netmask(self) -> str:
        return str(ipaddress.ip_network(self.cidr, strict=False).netmask)

    @property
    def network_address(self) -> str:
        return str(ipaddress.ip_network(self.cidr, strict=False).network_address)


@dataclass(frozen=True)
class AddressPair:
    ip_address: str
    mac_address: str


@dataclass(frozen=True)
class Port:
    id: str
    network_id: str
    mac_address: str
    fixed_ips: tuple[FixedIp, ...]
    device_owner: str = ""
    device_id: str = ""
    project_id: str = ""
    security_group_ids: tuple[str, ...] = ()
    port_security_enabled: bool = True
    allowed_address_pairs: tuple[AddressPair, ...] = ()
    dns_name: str = ""
    revision_number: int = 0
    name: str = ""

    @property
    def ipv4_addresses(self) -> tuple[str, ...]:
        return tuple(ip.ip_address for ip in self.fixed_ips if ip.version == 4)

    @property
    def is_network_service(self) -> bool:
        """Routers, DHCP, floating IPs: plumbed by the agent itself, never filtered."""
        return self.device_owner.startswith(NETWORK_OWNER_PREFIX)


@dataclass(frozen=True)
class Router:
    id: str
    name: str
    project_id: str
    gateway_network_id: str | None
    gateway_fixed_ips: tuple[FixedIp, ...] = ()
    enable_snat: bool = True
    admin_state_up: bool = True


@dataclass(frozen=True)
class FloatingIp:
    id: str
    floating_ip_address: str
    floating_network_id: str
    fixed_ip_address: str | None
    port_id: str | None
    router_id: str | None


@dataclass(frozen=True)
class SecurityGroupRule:
    id: str
    security_group_id: str
    direction: str                   # "ingress" | "egress"
    ethertype: str = "IPv4"
    protocol: str | None = None      # name ("tcp") or number ("50"); None = any
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None


@dataclass(frozen=True)
class SecurityGroup:
    id: str
    name: str
    rules: tuple[SecurityGroupRule, ...] = ()


@dataclass(frozen=True)
class Topology:
    """Everything the data plane is made from, keyed by id."""

    networks: Mapping[str, Network] = field(default_factory=dict)
    subnets: Mapping[str, Subnet] = field(default_factory=dict)
    ports: Mapping[str, Port] = field(default_factory=dict)
    routers: Mapping[str, Router] = field(default_factory=dict)
    floating_ips: Mapping[str, FloatingIp] = field(default_factory=dict)
    security_groups: Mapping[str, SecurityGroup] = field(default_factory=dict)

    def subnets_of(self, network_id: str) -> list[Subnet]:
        return sorted((s for s in self.subnets.values() if s.network_id == network_id), key=lambda s: s.id)

    def ports_of(self, network_id: str) -> list[Port]:
        return sorted((p for p in self.ports.values() if p.network_id == network_id), key=lambda p: p.id)

    def router_interfaces(self, router_id: str) -> list[Port]:
        return sorted((p for p in self.ports.values()
                       if p.device_id == router_id and p.device_owner in ROUTER_INTERFACE_OWNERS),
                      key=lambda p: p.id)

    def router_gateway_port(self, router_id: str) -> Port | None:
        for port in self.ports.values():
            if port.device_id == router_id and port.device_owner == ROUTER_GATEWAY_OWNER:
                return port
        return None

    def dhcp_ports(self, network_id: str) -> list[Port]:
        return [p for p in self.ports_of(network_id) if p.device_owner == DHCP_OWNER]

    def with_ports(self, extra: list[Port]) -> Topology:
        ports = dict(self.ports)
        ports.update({p.id: p for p in extra})
        return Topology(self.networks, self.subnets, ports, self.routers, self.floating_ips, self.security_groups)


# --- Neutron JSON -> records ----------------------------------------------------------


def _project(body: Mapping[str, Any]) -> str:
    return body.get("project_id") or body.get("tenant_id") or ""


def _port_number(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_network(body: Mapping[str, Any]) -> Network:
    return Network(id=body["id"], name=body.get("name") or "", mtu=int(body.get("mtu") or 1500),
                   external=bool(body.get("router:external")), project_id=_project(body),
                   network_type=body.get("provider:network_type") or "")


def parse_subnet(body: Mapping[str, Any]) -> Subnet:
    routes = tuple(HostRoute(r["destination"], r["nexthop"]) for r in body.get("host_routes") or ())
    return Subnet(id=body["id"], network_id=body["network_id"], cidr=body["cidr"],
                  ip_version=int(body.get("ip_version") or 4), gateway_ip=body.get("gateway_ip"),
                  enable_dhcp=bool(body.get("enable_dhcp", True)),
                  dns_nameservers=tuple(body.get("dns_nameservers") or ()), host_routes=routes)


def parse_port(body: Mapping[str, Any]) -> Port:
    fixed = tuple(FixedIp(ip["subnet_id"], ip["ip_address"]) for ip in body.get("fixed_ips") or ())
    pairs = tuple(AddressPair(p["ip_address"], p.get("mac_address") or body["mac_address"])
                  for p in body.get("allowed_address_pairs") or ())
    security = body.get("port_security_enabled")
    return Port(id=body["id"], network_id=body["network_id"], mac_address=body["mac_address"].lower(),
                fixed_ips=fixed, device_owner=body.get("device_owner") or "",
                device_id=body.get("device_id") or "", project_id=_project(body),
                security_group_ids=tuple(sorted(body.get("security_groups") or ())),
                port_security_enabled=True if security is None else bool(security),
                allowed_address_pairs=pairs, dns_name=body.get("dns_name") or "",
                revision_number=int(body.get("revision_number") or 0), name=body.get("name") or "")


def parse_router(body: Mapping[str, Any]) -> Router:
    gateway = body.get("external_gateway_info") or {}
    fixed = tuple(FixedIp(ip["subnet_id"], ip["ip_address"]) for ip in gateway.get("external_fixed_ips") or ())
    snat = gateway.get("enable_snat")
    return Router(id=body["id"], name=body.get("name") or "", project_id=_project(body),
                  gateway_network_id=gateway.get("network_id"), gateway_fixed_ips=fixed,
                  enable_snat=True if snat is None else bool(snat),
                  admin_state_up=bool(body.get("admin_state_up", True)))


def parse_floating_ip(body: Mapping[str, Any]) -> FloatingIp:
    return FloatingIp(id=body["id"], floating_ip_address=body["floating_ip_address"],
                      floating_network_id=body.get("floating_network_id") or "",
                      fixed_ip_address=body.get("fixed_ip_address"), port_id=body.get("port_id"),
                      router_id=body.get("router_id"))


def parse_rule(body: Mapping[str, Any]) -> SecurityGroupRule:
    protocol = body.get("protocol")
    return SecurityGroupRule(id=body["id"], security_group_id=body["security_group_id"],
                             direction=body["direction"], ethertype=body.get("ethertype") or "IPv4",
                             protocol=None if protocol in (None, "", "any") else str(protocol).lower(),
                             port_range_min=_port_number(body.get("port_range_min")),
                             port_range_max=_port_number(body.get("port_range_max")),
                             remote_ip_prefix=body.get("remote_ip_prefix"),
                             remote_group_id=body.get("remote_group_id"))


def parse_security_group(body: Mapping[str, Any]) -> SecurityGroup:
    rules = tuple(sorted((parse_rule(r) for r in body.get("security_group_rules") or ()), key=lambda r: r.id))
    return SecurityGroup(id=body["id"], name=body.get("name") or "", rules=rules)


def topology_from_payload(payload: Mapping[str, list[Mapping[str, Any]]]) -> Topology:
    """Neutron's list answers ({"networks": [...], "ports": [...], ...}) as one Topology."""
    def index(key, parse):
        return {item["id"]: parse(item) for item in payload.get(key) or ()}

    return Topology(networks=index("networks", parse_network), subnets=index("subnets", parse_subnet),
                    ports=index("ports", parse_port), routers=index("routers", parse_router),
                    floating_ips=index("floatingips", parse_floating_ip),
                    security_groups=index("security_groups", parse_security_group))


# --- the API ----------------------------------------------------------------------------


def api_errors() -> tuple[type[BaseException], ...]:
    """What a call through openstacksdk raises when the API is down or answers badly."""
    from keystoneauth1 import exceptions as ksa_exceptions
    from openstack import exceptions

    return exceptions.SDKException, ksa_exceptions.ClientException, ValueError, KeyError


def fetch_payload(network_proxy) -> dict[str, list[dict]]:
    """GET every collection the data plane needs, raw JSON, through openstacksdk's network proxy."""
    from openstack import exceptions

    payload = {}
    for collection in COLLECTIONS:
        try:
            response = network_proxy.get(f"/{collection}")
            exceptions.raise_from_response(response)
            payload[collection] = response.json()[collection]
        except api_errors() as exc:
            raise NeutronError(f"GET /{collection} failed: {exc}") from exc
    return payload
