"""Make the machine match a :class:`~.desired.DesiredState`, object by object.

Each object (bridge, firewall, DHCP server, router, port record) is applied
by an idempotent step; a step whose record did not change since it last
succeeded, and whose Linux objects are still there, is skipped (``deep``
re-applies everything). A failing step is recorded in the outcome under the
object's name and retried by the next reconcile; the others go on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from astrostack_localcloud.net import dataplane, firewall, router
from astrostack_localcloud.net.config import AgentConfig
from astrostack_localcloud.net.dataplane import DataplaneError, Runner
from astrostack_localcloud.net.desired import (
    DesiredState,
    DhcpServer,
    MetadataTarget,
    RouterConfig,
    Settings,
    desired_state,
    dhcp_device_id,
    dhcp_subnets,
    tenant_networks,
)
from astrostack_localcloud.net.dhcp import DhcpError, Dnsmasq, stop_pid_file
from astrostack_localcloud.net.neutron_state import NeutronError, Port, Topology

LOG = logging.getLogger("astrostack_localcloud.net.reconcile")
ROUTER_PREFIX, DHCP_PREFIX, BRIDGE_PREFIX = "qrouter-", "qdhcp-", "brq"
# The namespaced ends of our veths' peers in the bridges all start with "t" (naming.peer_device).
OUR_PEER_PREFIXES = ("tqr-", "tqg-", "tns-")
STEP_ERRORS = (DataplaneError, DhcpError, NeutronError, OSError)


class DhcpPortSource(Protocol):
    def create(self, network_id: str, subnet_ids: list[str], device_id: str, project_id: str) -> Port:
        """Create the network's DHCP port (device_owner network:dhcp, the network's project) in Neutron."""


@dataclass
class Outcome:
    failures: dict[str, str] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def did(self, action: str) -> None:
        self.actions.append(action)
        LOG.info("%s", action)


class _JsonFile:
    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def save(self, data: dict) -> None:
        write_json(self.path, data)


def write_json(path: Path, data: dict) -> bool:
    """Atomically, and only if different; True if written."""
    text = json.dumps(data, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)
    return True


class ZoneBook:
    """Conntrack zone per network, stable across restarts (zones 1..65535, smallest free first)."""

    def __init__(self, path: Path):
        self._file = _JsonFile(path)
        self.zones: dict[str, int] = {k: int(v) for k, v in self._file.load().items()}

    def assign(self, network_ids: list[str]) -> dict[str, int]:
        wanted = set(network_ids)
        zones = {k: v for k, v in self.zones.items() if k in wanted}
        used = set(zones.values())
        free = (z for z in range(1, 65536) if z not in used)
        for network_id in sorted(wanted - set(zones)):
            zones[network_id] = next(free)
        if zones != self.zones:
            self.zones = zones
            self._file.save(zones)
        return dict(zones)


class Registry:
    """Namespaces and bridges this agent manages (their names are shared with others on the machine)."""

    def __init__(self, path: Path):
        self._file = _JsonFile(path)
        data = self._file.load()
        self.namespaces: set[str] = set(data.get("namespaces", ()))
        self.bridges: set[str] = set(data.get("bridges", ()))

    def _save(self) -> None:
        self._file.save({"namespaces": sorted(self.namespaces), "bridges": sorted(self.bridges)})

    def add(self, kind: str, name: str) -> None:
        names = getattr(self, kind)
        if name not in names:
            names.add(name)
            self._save()

    def discard(self, kind: str, name: str) -> None:
        names = getattr(self, kind)
        if name in names:
            names.discard(name)
            self._save()


class Reconciler:
    def __init__(self, config: AgentConfig, runner: Runner | None = None, proxy=None,
                 dhcp_ports: DhcpPortSource | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.runner = runner or Runner(config.host_namespace)
        self.proxy = proxy
        self.dhcp_ports = dhcp_ports
        self.clock = clock
        self.settings = Settings(external_bridge=config.external_bridge, dns_domain=config.dns_domain,
                                 lease_seconds=config.dhcp_lease_duration)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.zones = ZoneBook(config.state_dir / "zones.json")
        self.registry = Registry(config.state_dir / "owned.json")
        self._applied: dict[str, object] = {}
        self._targets: dict[tuple[str, str], MetadataTarget] = {}
        self.state = DesiredState(external_bridge=config.external_bridge)

    # --- the metadata proxy's view -------------------------------------------------------

    def lookup(self, router_id: str, address: str) -> MetadataTarget | None:
        return self._targets.get((router_id, address))

    # --- one pass --------------------------------------------------------------------------

    def desired(self, topology: Topology) -> DesiredState:
        zones = self.zones.assign([n.id for n in tenant_networks(topology)])
        return desired_state(topology, self.settings, zones, self.config.host)

    def reconcile(self, topology: Topology, deep: bool = False) -> Outcome:
        started = self.clock()
        outcome = Outcome()
        state = self.desired(topology)
        if state.networks_without_dhcp_port and self.dhcp_ports is not None:
            created = self._create_dhcp_ports(topology, state, outcome)
            if created:
                topology = topology.with_ports(created)
                state = self.desired(topology)
        self._targets = dict(state.metadata_targets)
        self.apply(state, outcome, deep)
        outcome.elapsed = self.clock() - started
        return outcome

    def apply(self, state: DesiredState, outcome: Outcome, deep: bool = False) -> None:
        previous, self.state = self.state, state
        host_links = self._step(outcome, "host links", lambda: dataplane.links(self.runner)) or {}
        for bridge, mtu in sorted(state.bridges.items()):
            self._step(outcome, f"bridge {bridge}", self._apply_bridge, bridge, mtu, host_links)
        host_links = self._step(outcome, "host links", lambda: dataplane.links(self.runner)) or host_links
        self._step(outcome, "firewall", self._apply_firewall, state, previous, deep)
        for server in state.dhcp.values():
            self._step(outcome, f"dhcp:{server.network_id}", self._apply_dhcp, server, host_links, deep,
                       key=f"dhcp:{server.network_id}")
        for config in state.routers.values():
            self._step(outcome, f"router:{config.router_id}", self._apply_router, config, host_links, deep,
                       key=f"router:{config.router_id}")
        self._step(outcome, "port records", self._write_port_records, state, outcome)
        self._step(outcome, "stale objects", self._remove_stale, state, outcome)

    def _step(self, outcome: Outcome, what: str, action, *args, key: str | None = None):
        try:
            return action(*args)
        except STEP_ERRORS as exc:
            outcome.failures[what] = str(exc)
            self._applied.pop(key or what, None)
            LOG.error("%s: %s", what, exc)
            return None

    # --- DHCP ports in Neutron ----------------------------------------------------------

    def _create_dhcp_ports(self, topology: Topology, state: DesiredState, outcome: Outcome) -> list[Port]:
        created = []
        for network_id in state.networks_without_dhcp_port:
            subnet_ids = [s.id for s in dhcp_subnets(topology, network_id)]
            device_id = dhcp_device_id(self.config.host, network_id)
            port = self._step(outcome, f"DHCP port of network {network_id}", self.dhcp_ports.create,
                              network_id, subnet_ids, device_id, topology.networks[network_id].project_id)
            if port is not None:
                outcome.did(f"created DHCP port {port.id} of network {network_id}")
                created.append(port)
        return created

    # --- bridges ------------------------------------------------------------------------------

    def _apply_bridge(self, bridge: str, mtu: int, host_links: dict) -> None:
        link = host_links.get(bridge)
        if link is None or link.mtu != mtu or not link.up:
            dataplane.ensure_bridge(self.runner, bridge, mtu, host_links)
            self.registry.add("bridges", bridge)
            host_links.pop(bridge, None)

    # --- security groups ----------------------------------------------------------------------

    def _apply_firewall(self, state: DesiredState, previous: DesiredState, deep: bool) -> None:
        self._apply_ipsets(state.ipsets, "inet", deep)
        self._apply_ipsets(state.ipsets6, "inet6", deep)
        for version in (4, 6):
            rendered = firewall.render_restore(state, version=version)
            if deep or self._applied.get(f"firewall{version}") != rendered:
                existing = firewall.chains_in_save(
                    dataplane.iptables_save(self.runner, firewall.TABLES[version], version=version))
                dataplane.iptables_restore(self.runner, firewall.render_restore(state, existing, version),
                                           what=f"security-group chains (IPv{version})", noflush=True,
                                           version=version)
                self._applied[f"firewall{version}"] = rendered
            # Cheap, and someone flushing FORWARD (or a firewall tool) must not open the VMs for long.
            for table, builtin, chain in firewall.JUMPS[version]:
                dataplane.ensure_jump(self.runner, table, builtin, chain, version)
        self._apply_ebtables(state, deep)
        self._forget_connections_of_gone_ports(state, previous)

    def _apply_ebtables(self, state: DesiredState, deep: bool) -> None:
        rendered = firewall.render_ebtables(state)
        saved = dataplane.ebtables_save(self.runner, firewall.EB_TABLE)
        if deep or self._applied.get("ebtables") != rendered:
            existing = firewall.chains_in_save(saved).get(firewall.EB_TABLE, set())
            dataplane.ebtables_restore(self.runner, firewall.render_ebtables(state, existing),
                                       what="ARP and MAC anti-spoofing chains")
            self._applied["ebtables"] = rendered
        if not firewall.ebtables_jump_present(saved):
            dataplane.ebtables_jump(self.runner, firewall.EB_TABLE, "PREROUTING", firewall.EB_CHAIN, insert=True)

    def _apply_ipsets(self, wanted: dict, family: str, deep: bool) -> None:
        sets = {name: members for name, members in wanted.items()
                if deep or self._applied.get(f"ipset:{name}") != members}
        if sets:
            dataplane.ipset_restore(self.runner, firewall.render_ipsets(sets, family))
            self._applied.update({f"ipset:{name}": members for name, members in sets.items()})

    def _forget_connections_of_gone_ports(self, state: DesiredState, previous: DesiredState) -> None:
        now = {p.port_id for p in state.filtered_ports}
        for port in previous.filtered_ports:
            if port.port_id not in now:
                for ip in port.ips:
                    dataplane.conntrack_flush(self.runner, previous.zones.get(port.bridge), ip)

    # --- DHCP -------------------------------------------------------------------------------------

    def _dhcp_dir(self, network_id: str) -> Path:
        return self.config.dhcp_dir / network_id

    def _apply_dhcp(self, server: DhcpServer, host_links: dict, deep: bool) -> None:
        key = f"dhcp:{server.network_id}"
        dnsmasq = Dnsmasq(server, self._dhcp_dir(server.network_id))
        if (not deep and self._applied.get(key) == server and server.veth.outer in host_links
                and server.namespace in dataplane.namespaces() and dnsmasq.running_pid()):
            return
        self._require_bridge(server.veth.bridge, host_links, f"DHCP of network {server.network_id}")
        dataplane.ensure_namespace(self.runner, server.namespace, forwarding=False)
        self.registry.add("namespaces", server.namespace)
        dataplane.ensure_veth(self.runner, server.veth, server.namespace, host_links)
        dataplane.delete_stale_devices(self.runner, server.namespace, ("ns-",), {server.veth.inner})
        dataplane.set_default_route(self.runner, server.namespace, server.default_gateway, server.veth.inner)
        did = dnsmasq.ensure()
        if did != "unchanged":
            LOG.info("dnsmasq of network %s %s (%d hosts)", server.network_id, did, len(server.hosts))
        self._applied[key] = server

    @staticmethod
    def _require_bridge(bridge: str, host_links: dict, what: str) -> None:
        if bridge not in host_links:
            raise DataplaneError(f"{what}: bridge {bridge} does not exist")

    # --- routers ------------------------------------------------------------------------------

    def _router_intact(self, config: RouterConfig, host_links: dict) -> bool:
        veths = list(config.internal) + ([config.gateway] if config.gateway else [])
        proxy_ok = self.proxy is None or config.router_id in self.proxy.routers()
        return (config.namespace in dataplane.namespaces() and proxy_ok
                and all(v.outer in host_links for v in veths))

    def _apply_router(self, config: RouterConfig, host_links: dict, deep: bool) -> None:
        key = f"router:{config.router_id}"
        before = self._applied.get(key)
        if not deep and before == config and self._router_intact(config, host_links):
            return
        what = f"router {config.router_id}"
        veths = list(config.internal) + ([config.gateway] if config.gateway else [])
        for veth in veths:
            self._require_bridge(veth.bridge, host_links, what)
        dataplane.ensure_namespace(self.runner, config.namespace, forwarding=True)
        self.registry.add("namespaces", config.namespace)
        added = {v.inner: dataplane.ensure_veth(self.runner, v, config.namespace, host_links) for v in veths}
        dataplane.delete_stale_devices(self.runner, config.namespace, ("qr-", "qg-"), {v.inner for v in veths})
        dataplane.set_default_route(self.runner, config.namespace, config.external_gateway, config.gateway_device)
        dataplane.iptables_restore(self.runner, router.render_restore(config), what=f"iptables of {what}",
                                   namespace=config.namespace)
        self._announce(config, added.get(config.gateway_device, []))
        self._forget_old_floating_ips(config, before)
        if self.proxy is not None:
            self.proxy.ensure(config.router_id, config.namespace)
        self._applied[key] = config

    def _announce(self, config: RouterConfig, added: list[str]) -> None:
        if not config.gateway:
            return
        for address in added:
            try:
                dataplane.gratuitous_arp(config.namespace, config.gateway.inner, config.gateway.mac,
                                         address.split("/")[0])
            except OSError as exc:
                LOG.warning("gratuitous ARP of %s on %s: %s", address, config.gateway.inner, exc)

    def _forget_old_floating_ips(self, config: RouterConfig, before: object) -> None:
        if not isinstance(before, RouterConfig):
            return
        for mapping in set(before.floating) - set(config.floating):
            dataplane.conntrack_flush(self.runner, None, mapping.floating_ip, namespace=config.namespace)
            dataplane.conntrack_flush(self.runner, None, mapping.fixed_ip, namespace=config.namespace)

    # --- what the Nova driver waits for -------------------------------------------------------

    def _write_port_records(self, state: DesiredState, outcome: Outcome) -> None:
        ports_dir = self.config.ports_dir
        ports_dir.mkdir(parents=True, exist_ok=True)
        blocked = self._networks_not_ready(state, outcome)
        firewall_ok = "firewall" not in outcome.failures
        filtered = {p.port_id for p in state.filtered_ports}
        for record in state.port_records.values():
            if record.network_id in blocked or (record.port_id in filtered and not firewall_ok):
                continue
            if f"bridge {record.bridge}" in outcome.failures:
                continue
            if write_json(ports_dir / record.port_id, record.as_json()):
                LOG.info("port %s ready (%s %s)", record.port_id, record.mac, " ".join(record.ips))
        for path in ports_dir.iterdir():
            if not path.name.startswith(".") and path.name not in state.port_records:
                path.unlink(missing_ok=True)
                LOG.info("port %s gone", path.name)

    @staticmethod
    def _networks_not_ready(state: DesiredState, outcome: Outcome) -> set[str]:
        blocked = set(state.networks_without_dhcp_port)
        blocked.update(what.split(":", 1)[1] for what in outcome.failures if what.startswith("dhcp:"))
        return blocked

    # --- removal ------------------------------------------------------------------------------

    def _remove_stale(self, state: DesiredState, outcome: Outcome) -> None:
        wanted = {c.namespace for c in state.routers.values()} | {s.namespace for s in state.dhcp.values()}
        for namespace in sorted(self.registry.namespaces - wanted):
            self._step(outcome, f"remove {namespace}", self._remove_namespace, namespace, outcome)
        wanted_sets = set(state.ipsets) | set(state.ipsets6)
        for name in sorted(dataplane.ipset_names(self.runner, firewall.IPSET_PREFIXES) - wanted_sets):
            if "firewall" not in outcome.failures:
                dataplane.ipset_destroy(self.runner, name)
                self._applied.pop(f"ipset:{name}", None)
        for bridge in sorted(self.registry.bridges - set(state.bridges)):
            self._step(outcome, f"remove bridge {bridge}", self._remove_bridge, bridge, outcome)
        self._remove_orphan_dhcp_dirs(state)

    def _remove_namespace(self, namespace: str, outcome: Outcome) -> None:
        if namespace.startswith(ROUTER_PREFIX):
            router_id = namespace[len(ROUTER_PREFIX):]
            if self.proxy is not None:
                self.proxy.remove(router_id)
            self._applied.pop(f"router:{router_id}", None)
        if namespace.startswith(DHCP_PREFIX):
            network_id = namespace[len(DHCP_PREFIX):]
            stop_pid_file(self._dhcp_dir(network_id) / "pid")
            self._applied.pop(f"dhcp:{network_id}", None)
        dataplane.delete_namespace(self.runner, namespace)
        self.registry.discard("namespaces", namespace)
        outcome.did(f"removed namespace {namespace}")

    def _remove_bridge(self, bridge: str, outcome: Outcome) -> None:
        present = dataplane.links(self.runner)
        if bridge in present:
            members = [m for m in dataplane.bridge_members(present, bridge) if not m.startswith(OUR_PEER_PREFIXES)]
            if members:
                LOG.info("bridge %s kept: still has %s", bridge, " ".join(members))
                return
            dataplane.delete_link(self.runner, bridge)
            outcome.did(f"removed bridge {bridge}")
        self.registry.discard("bridges", bridge)

    def _remove_orphan_dhcp_dirs(self, state: DesiredState) -> None:
        if not self.config.dhcp_dir.is_dir():
            return
        for directory in self.config.dhcp_dir.iterdir():
            if directory.is_dir() and directory.name not in state.dhcp:
                stop_pid_file(directory / "pid")
                shutil.rmtree(directory, ignore_errors=True)

    def _remove_our_chains(self, version: int, outcome: Outcome) -> None:
        for table, builtin, chain in firewall.JUMPS[version]:
            self._step(outcome, f"jump to {chain} (IPv{version})", dataplane.remove_jump, self.runner, table,
                       builtin, chain, version)
        existing = self._step(outcome, f"our chains (IPv{version})", lambda: firewall.chains_in_save(
            dataplane.iptables_save(self.runner, firewall.TABLES[version], version=version))) or {}
        removal = firewall.render_removal(existing)
        if removal:
            self._step(outcome, f"our chains (IPv{version})", dataplane.iptables_restore, self.runner, removal,
                       f"delete our chains (IPv{version})", dataplane.HOST, True, version)

    def _remove_ebtables(self) -> None:
        dataplane.ebtables_jump(self.runner, firewall.EB_TABLE, "PREROUTING", firewall.EB_CHAIN, insert=False)
        saved = dataplane.ebtables_save(self.runner, firewall.EB_TABLE)
        removal = firewall.render_ebtables_removal(firewall.chains_in_save(saved).get(firewall.EB_TABLE, set()))
        if removal:
            dataplane.ebtables_restore(self.runner, removal, what="delete ARP and MAC anti-spoofing chains")

    # --- everything, for astrostack-localnet --cleanup-all ----------------------------------

    def cleanup_all(self, sweep: bool) -> Outcome:
        """Remove every object this agent made; ``sweep`` adds every qrouter-/qdhcp- namespace and
        brq bridge of the host namespace (when it is the machine's own, they are all the local cloud's)."""
        outcome = Outcome()
        if sweep:
            for namespace in dataplane.namespaces():
                if namespace.startswith((ROUTER_PREFIX, DHCP_PREFIX)):
                    self.registry.add("namespaces", namespace)
            present = self._step(outcome, "host links", lambda: dataplane.links(self.runner)) or {}
            for link in present.values():
                if link.kind == "bridge" and link.name.startswith(BRIDGE_PREFIX):
                    self.registry.add("bridges", link.name)
        for version in (4, 6):
            self._remove_our_chains(version, outcome)
        self._step(outcome, "ebtables chains", self._remove_ebtables)
        self._applied.clear()
        empty = DesiredState(external_bridge=self.config.external_bridge)
        self._remove_stale(empty, outcome)
        self._write_port_records(empty, outcome)
        self.state = empty
        return outcome
