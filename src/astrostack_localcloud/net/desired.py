"""Neutron's records -> the data plane this machine should have (pure).

One :class:`DesiredState` holds every object the agent plumbs, each as a
frozen record, so that "did it change" is an equality test and the
renderers (:mod:`.firewall`, :mod:`.router`, :mod:`.dhcp`) need nothing
but these records.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from astrostack_localcloud import naming
from astrostack_localcloud.net.neutron_state import Network, Port, SecurityGroupRule, Subnet, Topology

METADATA_CIDR = naming.METADATA_ADDRESS + "/32"
DEFAULT_DNS_DOMAIN = "openstacklocal"
DEFAULT_LEASE_SECONDS = 86400


@dataclass(frozen=True)
class Settings:
    """The agent's knobs that shape the desired state."""

    external_bridge: str = naming.EXTERNAL_BRIDGE
    dns_domain: str = DEFAULT_DNS_DOMAIN
    lease_seconds: int = DEFAULT_LEASE_SECONDS


@dataclass(frozen=True)
class Veth:
    """A veth whose ``inner`` end lives in a namespace and whose ``outer`` end is a bridge port."""

    inner: str
    outer: str
    bridge: str
    mac: str
    addresses: tuple[str, ...]      # "ip/prefixlen"
    mtu: int


@dataclass(frozen=True)
class DhcpHost:
    mac: str
    ip: str
    fqdn: str


@dataclass(frozen=True)
class DhcpSubnet:
    id: str
    network_address: str
    netmask: str
    gateway: str | None              # option 3; None = send no router
    dns_servers: tuple[str, ...]     # option 6
    classless_routes: tuple[tuple[str, str], ...]   # option 121: (destination, nexthop)


@dataclass(frozen=True)
class DhcpServer:
    network_id: str
    namespace: str
    port_id: str
    veth: Veth
    default_gateway: str | None
    subnets: tuple[DhcpSubnet, ...]
    hosts: tuple[DhcpHost, ...]
    mtu: int
    lease_seconds: int
    domain: str


@dataclass(frozen=True)
class FloatingMapping:
    floating_ip: str
    fixed_ip: str


@dataclass(frozen=True)
class RouterConfig:
    router_id: str
    namespace: str
    internal: tuple[Veth, ...]
    gateway: Veth | None             # qg-: gateway address and the floating IPs (/32)
    gateway_ip: str | None           # the router's own external address (SNAT source)
    external_gateway: str | None     # next hop of the default route
    snat: bool
    floating: tuple[FloatingMapping, ...]

    @property
    def gateway_device(self) -> str | None:
        return self.gateway.inner if self.gateway else None


@dataclass(frozen=True)
class FilterRule:
    """One security-group rule as the firewall applies it (IPv4)."""

    direction: str
    protocol: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    remote_prefix: str | None = None
    remote_ipset: str | None = None
    ethertype: str = "IPv4"

    @property
    def version(self) -> int:
        return 6 if self.ethertype == "IPv6" else 4


@dataclass(frozen=True)
class FilteredPort:
    port_id: str
    tap: str
    bridge: str
    mac: str
    ips: tuple[str, ...]
    address_pairs: tuple[tuple[str, str], ...]       # (mac, ip or cidr), both families
    dhcp_servers: tuple[str, ...]
    ingress: tuple[FilterRule, ...]                  # both families
    egress: tuple[FilterRule, ...]
    ips6: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortRecord:
    """What the Nova driver waits for in ``net/ports/<port_id>``."""

    port_id: str
    network_id: str
    mac: str
    ips: tuple[str, ...]
    revision: int
    bridge: str
    mtu: int

    def as_json(self) -> dict:
        return {"mac": self.mac, "ips": list(self.ips), "revision": self.revision,
                "network_id": self.network_id, "bridge": self.bridge, "mtu": self.mtu}


@dataclass(frozen=True)
class MetadataTarget:
    instance_id: str
    project_id: str


@dataclass(frozen=True)
class DesiredState:
    bridges: Mapping[str, int] = field(default_factory=dict)            # bridge -> MTU
    bridge_networks: Mapping[str, str] = field(default_factory=dict)    # bridge -> network id
    zones: Mapping[str, int] = field(default_factory=dict)              # bridge -> conntrack zone
    external_bridge: str = naming.EXTERNAL_BRIDGE
    dhcp: Mapping[str, DhcpServer] = field(default_factory=dict)        # network id ->
    routers: Mapping[str, RouterConfig] = field(default_factory=dict)
    filtered_ports: tuple[FilteredPort, ...] = ()
    ipsets: Mapping[str, frozenset[str]] = field(default_factory=dict)
    ipsets6: Mapping[str, frozenset[str]] = field(default_factory=dict)
    port_records: Mapping[str, PortRecord] = field(default_factory=dict)
    metadata_targets: Mapping[tuple[str, str], MetadataTarget] = field(default_factory=dict)
    networks_without_dhcp_port: tuple[str, ...] = ()


# --- helpers ----------------------------------------------------------------------------


def _with_prefix(ip: str, subnet: Subnet | None) -> str:
    return f"{ip}/{subnet.prefixlen if subnet else 32}"


def _ip_version(ip: str) -> int:
    return ipaddress.ip_network(ip, strict=False).version


def dhcp_subnets(topology: Topology, network_id: str) -> list[Subnet]:
    return [s for s in topology.subnets_of(network_id) if s.enable_dhcp and s.ip_version == 4]


def tenant_networks(topology: Topology) -> list[Network]:
    """Networks with a bridge of their own (the external network's bridge is the control plane's)."""
    return sorted((n for n in topology.networks.values() if not n.external), key=lambda n: n.id)


def hostname_for(port: Port, ip: str) -> str:
    """Neutron's DNS assignment: the port's dns_name, else host-<ip with dashes>."""
    return port.dns_name or "host-" + ip.replace(".", "-").replace(":", "-")


# --- DHCP -------------------------------------------------------------------------------


def _routed_subnets(topology: Topology) -> set[str]:
    """Subnets with a router interface on them (Neutron calls the others isolated)."""
    return {ip.subnet_id for p in topology.ports.values()
            if p.device_owner in ("network:router_interface", "network:router_interface_distributed")
            for ip in p.fixed_ips}


def _classless_routes(subnet: Subnet, siblings: list[Subnet], routed: bool) -> tuple[tuple[str, str], ...]:
    """Option 121 as Neutron's dnsmasq driver builds it (metadata via the router, then default)."""
    gateway = subnet.gateway_ip
    routes = [(s.cidr, "0.0.0.0") for s in siblings if s.id != subnet.id and s.cidr != subnet.cidr]
    for route in subnet.host_routes:
        if route.destination == "0.0.0.0/0":
            gateway = gateway or route.nexthop
        else:
            routes.append((route.destination, route.nexthop))
    if routed and gateway:
        routes.append((METADATA_CIDR, gateway))
    if routes and gateway:
        routes.append(("0.0.0.0/0", gateway))
    return tuple(routes)


def _dhcp_subnet(subnet: Subnet, siblings: list[Subnet], routed: bool, dhcp_ip: str | None) -> DhcpSubnet:
    dns = subnet.dns_nameservers or ((dhcp_ip,) if dhcp_ip else ())
    return DhcpSubnet(id=subnet.id, network_address=subnet.network_address, netmask=subnet.netmask,
                      gateway=subnet.gateway_ip, dns_servers=tuple(dns),
                      classless_routes=_classless_routes(subnet, siblings, routed))


def _dhcp_hosts(topology: Topology, network_id: str, subnet_ids: set[str], domain: str) -> tuple[DhcpHost, ...]:
    hosts = []
    for port in topology.ports_of(network_id):
        for fixed in port.fixed_ips:
            if fixed.subnet_id in subnet_ids:
                name = hostname_for(port, fixed.ip_address)
                hosts.append(DhcpHost(port.mac_address, fixed.ip_address, f"{name}.{domain}" if domain else name))
    return tuple(sorted(hosts, key=lambda h: (h.ip, h.mac)))


def dhcp_server(topology: Topology, network: Network, port: Port, settings: Settings) -> DhcpServer:
    subnets = dhcp_subnets(topology, network.id)
    routed = _routed_subnets(topology)
    ip_by_subnet = {ip.subnet_id: ip.ip_address for ip in port.fixed_ips}
    addresses = tuple(_with_prefix(ip.ip_address, topology.subnets.get(ip.subnet_id))
                      for ip in port.fixed_ips if ip.version == 4)
    inner = naming.dhcp_device(port.id)
    veth = Veth(inner=inner, outer=naming.peer_device(inner), bridge=naming.network_bridge(network.id),
                mac=port.mac_address, addresses=addresses, mtu=network.mtu)
    gateway = next((s.gateway_ip for s in subnets if s.gateway_ip), None)
    return DhcpServer(network_id=network.id, namespace=naming.dhcp_namespace(network.id), port_id=port.id,
                      veth=veth, default_gateway=gateway,
                      subnets=tuple(_dhcp_subnet(s, subnets, s.id in routed, ip_by_subnet.get(s.id))
                                    for s in subnets),
                      hosts=_dhcp_hosts(topology, network.id, {s.id for s in subnets}, settings.dns_domain),
                      mtu=network.mtu, lease_seconds=settings.lease_seconds, domain=settings.dns_domain)


def dhcp_device_id(host: str, network_id: str) -> str:
    """The device_id Neutron's DHCP agent gives its port: dhcp<uuid5(host)>-<network id>."""
    return f"dhcp{uuid.uuid5(uuid.NAMESPACE_DNS, host)}-{network_id}"


def dhcp_port_for(topology: Topology, network_id: str, host: str) -> Port | None:
    """The network's DHCP port: ours (by device id) first, else any network:dhcp port."""
    ports = topology.dhcp_ports(network_id)
    ours = [p for p in ports if p.device_id == dhcp_device_id(host, network_id)]
    return (ours or ports or [None])[0]


# --- routers ----------------------------------------------------------------------------


def _internal_veth(topology: Topology, port: Port) -> Veth | None:
    network = topology.networks.get(port.network_id)
    if network is None or network.external:
        return None
    inner = naming.router_internal_device(port.id)
    addresses = tuple(_with_prefix(ip.ip_address, topology.subnets.get(ip.subnet_id))
                      for ip in port.fixed_ips if ip.version == 4)
    return Veth(inner=inner, outer=naming.peer_device(inner), bridge=naming.network_bridge(network.id),
                mac=port.mac_address, addresses=addresses, mtu=network.mtu)


def _floating(topology: Topology, router_id: str) -> tuple[FloatingMapping, ...]:
    mappings = [FloatingMapping(f.floating_ip_address, f.fixed_ip_address)
                for f in topology.floating_ips.values()
                if f.router_id == router_id and f.port_id and f.fixed_ip_address]
    return tuple(sorted(mappings, key=lambda m: m.floating_ip))


def router_config(topology: Topology, router_id: str, settings: Settings) -> RouterConfig:
    router = topology.routers[router_id]
    internal = tuple(v for v in (_internal_veth(topology, p) for p in topology.router_interfaces(router_id)) if v)
    gateway_port = topology.router_gateway_port(router_id)
    gateway_fixed = next((ip for ip in router.gateway_fixed_ips if ip.version == 4), None)
    if gateway_port is None or gateway_fixed is None:
        return RouterConfig(router_id, naming.router_namespace(router_id), internal, None, None, None, False, ())
    external_subnet = topology.subnets.get(gateway_fixed.subnet_id)
    floating = _floating(topology, router_id)
    inner = naming.router_gateway_device(gateway_port.id)
    external_mtu = topology.networks[gateway_port.network_id].mtu if gateway_port.network_id in topology.networks else 1500
    addresses = (_with_prefix(gateway_fixed.ip_address, external_subnet),) + tuple(
        f"{m.floating_ip}/32" for m in floating)
    gateway = Veth(inner=inner, outer=naming.peer_device(inner), bridge=settings.external_bridge,
                   mac=gateway_port.mac_address, addresses=addresses, mtu=external_mtu)
    return RouterConfig(router_id=router_id, namespace=naming.router_namespace(router_id), internal=internal,
                        gateway=gateway, gateway_ip=gateway_fixed.ip_address,
                        external_gateway=external_subnet.gateway_ip if external_subnet else None,
                        snat=router.enable_snat, floating=floating)


def metadata_targets(topology: Topology) -> dict[tuple[str, str], MetadataTarget]:
    """(router id, source address) -> the instance behind it, over the router's networks."""
    targets = {}
    for router_id in topology.routers:
        networks = {p.network_id for p in topology.router_interfaces(router_id)}
        for network_id in networks:
            for port in topology.ports_of(network_id):
                if port.is_network_service or not port.device_id:
                    continue
                for ip in port.ipv4_addresses:
                    targets[(router_id, ip)] = MetadataTarget(port.device_id, port.project_id)
    return targets


# --- security groups --------------------------------------------------------------------


def group_ipset(group_id: str, ethertype: str) -> str:
    return (naming.security_group_ipset_v6 if ethertype == "IPv6" else naming.security_group_ipset)(group_id)


def _filter_rule(rule: SecurityGroupRule) -> FilterRule:
    remote_set = group_ipset(rule.remote_group_id, rule.ethertype) if rule.remote_group_id else None
    prefix = None if remote_set else rule.remote_ip_prefix
    return FilterRule(direction=rule.direction, protocol=rule.protocol, port_min=rule.port_range_min,
                      port_max=rule.port_range_max, remote_prefix=prefix, remote_ipset=remote_set,
                      ethertype=rule.ethertype)


def _port_rules(topology: Topology, port: Port, direction: str) -> tuple[FilterRule, ...]:
    rules: list[FilterRule] = []
    for group_id in port.security_group_ids:
        group = topology.security_groups.get(group_id)
        for rule in group.rules if group else ():
            if rule.direction == direction and rule.ethertype in ("IPv4", "IPv6"):
                converted = _filter_rule(rule)
                if converted not in rules:
                    rules.append(converted)
    return tuple(rules)


def filtered_port(topology: Topology, port: Port) -> FilteredPort:
    dhcp_ips = tuple(ip for p in topology.dhcp_ports(port.network_id) for ip in p.ipv4_addresses)
    pairs = tuple((pair.mac_address, pair.ip_address) for pair in port.allowed_address_pairs)
    return FilteredPort(port_id=port.id, tap=naming.tap_device(port.id),
                        bridge=naming.network_bridge(port.network_id), mac=port.mac_address,
                        ips=port.ipv4_addresses, address_pairs=pairs, dhcp_servers=dhcp_ips,
                        ingress=_port_rules(topology, port, "ingress"),
                        egress=_port_rules(topology, port, "egress"),
                        ips6=tuple(ip.ip_address for ip in port.fixed_ips if ip.version == 6))


def is_filtered(topology: Topology, port: Port) -> bool:
    network = topology.networks.get(port.network_id)
    return (network is not None and not network.external and port.port_security_enabled
            and not port.is_network_service)


def group_members(topology: Topology, group_id: str, version: int = 4) -> frozenset[str]:
    """Addresses of one family (fixed and allowed pairs) of every port in the group, as ipset entries."""
    members = set()
    for port in topology.ports.values():
        if group_id in port.security_group_ids:
            members.update(ip.ip_address for ip in port.fixed_ips if ip.version == version)
            members.update(p.ip_address for p in port.allowed_address_pairs if _ip_version(p.ip_address) == version)
    return frozenset(members)


def _ipsets(topology: Topology, ethertype: str) -> dict[str, frozenset[str]]:
    referenced = {rule.remote_group_id for port in topology.ports.values() if is_filtered(topology, port)
                  for group_id in port.security_group_ids
                  for rule in (topology.security_groups[group_id].rules
                               if group_id in topology.security_groups else ())
                  if rule.remote_group_id and rule.ethertype == ethertype}
    version = 6 if ethertype == "IPv6" else 4
    return {group_ipset(g, ethertype): group_members(topology, g, version) for g in sorted(referenced)}


# --- the whole ---------------------------------------------------------------------------


def _port_record(topology: Topology, port: Port) -> PortRecord:
    network = topology.networks[port.network_id]
    return PortRecord(port_id=port.id, network_id=network.id, mac=port.mac_address,
                      ips=tuple(ip.ip_address for ip in port.fixed_ips), revision=port.revision_number,
                      bridge=naming.network_bridge(network.id), mtu=network.mtu)


def desired_state(topology: Topology, settings: Settings, zones: Mapping[str, int], host: str) -> DesiredState:
    """Everything the data plane should be, given Neutron's state and each network's conntrack zone."""
    networks = tenant_networks(topology)
    bridges = {naming.network_bridge(n.id): n.mtu for n in networks}
    dhcp, missing = {}, []
    for network in networks:
        if not dhcp_subnets(topology, network.id):
            continue
        port = dhcp_port_for(topology, network.id, host)
        if port is None:
            missing.append(network.id)
        else:
            dhcp[network.id] = dhcp_server(topology, network, port, settings)
    routers = {r.id: router_config(topology, r.id, settings)
               for r in sorted(topology.routers.values(), key=lambda r: r.id) if r.admin_state_up}
    tenant_ids = {n.id for n in networks}
    filtered = tuple(filtered_port(topology, p) for p in sorted(topology.ports.values(), key=lambda p: p.id)
                     if is_filtered(topology, p))
    records = {p.id: _port_record(topology, p) for p in topology.ports.values()
               if p.network_id in tenant_ids and not p.is_network_service}
    return DesiredState(bridges=bridges,
                        bridge_networks={naming.network_bridge(n.id): n.id for n in networks},
                        zones={naming.network_bridge(n.id): zones[n.id] for n in networks if n.id in zones},
                        external_bridge=settings.external_bridge, dhcp=dhcp, routers=routers,
                        filtered_ports=filtered, ipsets=_ipsets(topology, "IPv4"),
                        ipsets6=_ipsets(topology, "IPv6"), port_records=records,
                        metadata_targets=metadata_targets(topology), networks_without_dhcp_port=tuple(missing))
