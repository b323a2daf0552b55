"""Security groups -> iptables, judged by meaning: the agent's own iptables-restore text,
run on packets by a small netfilter (localnet_world.Netfilter), says ACCEPT or DROP.

The groups are those of the product's heat_templates/cluster.yaml, turned into
Neutron's rules the way Heat creates them, so a rule the template lacks is a
packet dropped here as it would be on a cloud.
"""

from __future__ import annotations

import pytest
import yaml
from localnet_world import Ebtables, Frame, Netfilter, Packet, World, new_id, parse_ipset_restore

from astrostack import paths
from astrostack_localcloud import naming
from astrostack_localcloud.net import firewall
from astrostack_localcloud.net.desired import Settings, desired_state
from astrostack_localcloud.net.neutron_state import topology_from_payload

PRIVATE_CIDR = "10.10.0.0/24"
ALLOWED_SSH_CIDR = "172.24.4.0/24"
HOST_ADDRESS = "172.24.4.1"
PARAMS = {"private_cidr": PRIVATE_CIDR, "allowed_ssh_cidr": ALLOWED_SSH_CIDR}


def cluster_template() -> dict:
    return yaml.safe_load((paths.heat_templates_dir() / "cluster.yaml").read_text())


def resolve(value, mode: str):
    """The intrinsic functions the template's rules use: get_param, list_concat, if (mpi_mode)."""
    if isinstance(value, list):
        return [resolve(v, mode) for v in value]
    if not isinstance(value, dict) or len(value) != 1:
        return value
    (function, argument), = value.items()
    if function == "get_param":
        return PARAMS[argument]
    if function == "list_concat":
        return [item for part in resolve(argument, mode) for item in part]
    if function == "if":
        condition, when_true, when_false = argument
        assert condition in ("mpi_mode", "task_queue"), condition
        return resolve(when_true if mode == {"mpi_mode": "mpi", "task_queue": "task-queue"}[condition] else when_false,
                       mode)
    return value


def template_rules(mode: str = "swarm") -> dict[str, list[dict]]:
    """Each OS::Neutron::SecurityGroup of cluster.yaml: its rules, resolved for a cluster mode."""
    resources = cluster_template()["resources"]
    return {name: [{k: resolve(v, mode) for k, v in rule.items()}
                   for rule in resolve(resource["properties"].get("rules", []), mode)]
            for name, resource in resources.items() if resource["type"] == "OS::Neutron::SecurityGroup"}


def add_template_groups(world: World, rules_by_group: dict[str, list[dict]]) -> dict[str, str]:
    """The groups as Heat creates them (heat/.../neutron/security_group.py: _format_rule)."""
    groups = {name: world.group(name) for name in rules_by_group}
    for name, group_id in groups.items():
        for rule in rules_by_group[name]:
            remote_group = prefix = None
            if rule.get("remote_mode") == "remote_group_id":
                reference = rule.get("remote_group_id")
                remote_group = groups[reference["get_resource"]] if reference else group_id
            else:
                prefix = rule.get("remote_ip_prefix")
            world.rule(group_id, rule.get("direction", "ingress"), str(rule.get("protocol")),
                       rule.get("port_range_min"), rule.get("port_range_max"), prefix, remote_group)
    return groups


class Cluster:
    """A cluster as cluster.yaml makes it: manager, two workers, the NFS server, plus a stranger."""

    def __init__(self, rules_by_group: dict[str, list[dict]] | None = None):
        world = self.world = World()
        self.public = world.network("172.24.4.0/24", HOST_ADDRESS, external=True)
        self.net, self.subnet = world.network(PRIVATE_CIDR, "10.10.0.1", dns=("172.24.4.1",))
        groups = add_template_groups(world, rules_by_group or template_rules())
        self.stranger_group = world.group("stranger")
        self.router_id = world.router(self.public, "172.24.4.20", [(self.net, self.subnet, "10.10.0.1")])
        self.dhcp = world.port(self.net, self.subnet, "10.10.0.2", owner="network:dhcp", device_id="dhcp-x")
        self.manager = world.port(self.net, self.subnet, "10.10.0.10",
                                  groups=(groups["sg_members"], groups["sg_manager_ssh"]))
        self.worker1 = world.port(self.net, self.subnet, "10.10.0.11", groups=(groups["sg_members"],))
        self.worker2 = world.port(self.net, self.subnet, "10.10.0.12", groups=(groups["sg_members"],),
                                  pairs=({"ip_address": "10.10.0.100"},))
        self.nfs = world.port(self.net, self.subnet, "10.10.0.5", groups=(groups["sg_nfs"],))
        self.stranger = world.port(self.net, self.subnet, "10.10.0.66", groups=(self.stranger_group,))
        self.open_port = world.port(self.net, self.subnet, "10.10.0.77", security=False)
        world.floating_ip("172.24.4.30", self.manager, self.router_id)
        self.topology = topology_from_payload(world.payload)
        self.state = desired_state(self.topology, Settings(), {self.net: 7}, host="h")
        self.restore = firewall.render_restore(self.state)
        self.netfilter = Netfilter(self.restore, parse_ipset_restore(firewall.render_ipsets(self.state.ipsets)))
        self.bridge = naming.network_bridge(self.net)
        self.router_peer = naming.peer_device(naming.router_internal_device(
            next(p["id"] for p in world.payload["ports"] if p["device_owner"] == "network:router_interface")))
        self.dhcp_peer = naming.peer_device(naming.dhcp_device(self.dhcp["id"]))

    def tap(self, port: dict) -> str:
        return naming.tap_device(port["id"])

    def packet(self, source, target, protocol="tcp", dport=None, **extra) -> Packet:
        """A bridged packet from a port (or the router: None) to a port (or the router)."""
        src = extra.pop("src", source["fixed_ips"][0]["ip_address"] if source else HOST_ADDRESS)
        dst = extra.pop("dst", target["fixed_ips"][0]["ip_address"] if target else "198.51.100.7")
        return Packet(src=src, dst=dst, protocol=protocol, dport=dport,
                      physdev_in=self.tap(source) if source else self.router_peer,
                      physdev_out=self.tap(target) if target else self.router_peer,
                      in_interface=self.bridge, out_interface=self.bridge,
                      mac=extra.pop("mac", source["mac_address"] if source else "fa:16:3e:ff:ff:ff"), **extra)

    def verdict(self, *args, **kwargs) -> str:
        return self.netfilter.forward(self.packet(*args, **kwargs))


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture(scope="module")
def mpi_cluster() -> Cluster:
    return Cluster(template_rules("mpi"))


# --- the template's traffic ------------------------------------------------------------

COMMON = [("tcp", 22), ("icmp", None)]
SWARM = [("tcp", 2377), ("tcp", 7946), ("udp", 7946), ("udp", 4789), ("50", None)]
MPI = [("tcp", 2222), ("tcp", 40000), ("tcp", 40999)]


def _members_only(cluster: Cluster, protocol: str, port: int | None) -> None:
    assert cluster.verdict(cluster.worker1, cluster.manager, protocol, port) == "ACCEPT"
    assert cluster.verdict(cluster.manager, cluster.worker2, protocol, port) == "ACCEPT"
    assert cluster.verdict(cluster.stranger, cluster.manager, protocol, port) == "DROP"
    assert cluster.verdict(cluster.stranger, cluster.worker1, protocol, port) == "DROP"


@pytest.mark.parametrize(("protocol", "port"), COMMON + SWARM)
def test_swarm_members_accept_ssh_swarm_and_esp_from_members_only(cluster, protocol, port):
    _members_only(cluster, protocol, port)


@pytest.mark.parametrize(("protocol", "port"), COMMON + MPI)
def test_mpi_members_accept_ssh_and_open_mpi_from_members_only(mpi_cluster, protocol, port):
    _members_only(mpi_cluster, protocol, port)


@pytest.mark.parametrize(("protocol", "port"), MPI + [("tcp", 41000), ("tcp", 80), ("udp", 2377), ("47", None)])
def test_swarm_drops_what_no_rule_allows_even_between_members(cluster, protocol, port):
    assert cluster.verdict(cluster.worker1, cluster.manager, protocol, port) == "DROP"


@pytest.mark.parametrize(("protocol", "port"), SWARM + [("tcp", 39999), ("tcp", 41000)])
def test_mpi_drops_what_no_rule_allows_even_between_members(mpi_cluster, protocol, port):
    assert mpi_cluster.verdict(mpi_cluster.worker1, mpi_cluster.manager, protocol, port) == "DROP"


def test_ssh_and_ping_to_the_manager_from_the_allowed_cidr_only(cluster):
    assert cluster.verdict(None, cluster.manager, "tcp", 22) == "ACCEPT"          # the host, via the router
    assert cluster.verdict(None, cluster.manager, "icmp", icmp_type=8) == "ACCEPT"
    assert cluster.verdict(None, cluster.manager, "tcp", 22, src="203.0.113.9") == "DROP"
    assert cluster.verdict(None, cluster.worker1, "tcp", 22) == "DROP"           # workers: members only
    assert cluster.verdict(None, cluster.manager, "tcp", 2377) == "DROP"


def test_nfs_and_registry_from_the_subnet_ssh_from_members(cluster):
    for protocol, port in (("tcp", 2049), ("tcp", 111), ("udp", 111), ("tcp", 5000)):
        assert cluster.verdict(cluster.worker1, cluster.nfs, protocol, port) == "ACCEPT"
        assert cluster.verdict(cluster.stranger, cluster.nfs, protocol, port) == "ACCEPT"   # a CIDR rule
        assert cluster.verdict(None, cluster.nfs, protocol, port) == "DROP"                 # not from outside
    assert cluster.verdict(cluster.manager, cluster.nfs, "tcp", 22) == "ACCEPT"
    assert cluster.verdict(cluster.stranger, cluster.nfs, "tcp", 22) == "DROP"
    assert cluster.verdict(cluster.worker1, cluster.nfs, "tcp", 2377) == "DROP"


def test_egress_is_open_as_neutrons_default_groups_are(cluster):
    assert cluster.verdict(cluster.worker1, None, "tcp", 443) == "ACCEPT"
    assert cluster.verdict(cluster.nfs, None, "udp", 53) == "ACCEPT"


@pytest.mark.parametrize("missing", [
    {"protocol": "tcp", "port_range_min": 2377},
    {"protocol": 50},
    {"protocol": "udp", "port_range_min": 4789},
])
def test_a_rule_missing_from_the_template_fails_here(missing):
    rules = template_rules()
    members = rules["sg_members"]
    rules["sg_members"] = [r for r in members if not all(r.get(k) == v for k, v in missing.items())]
    assert len(rules["sg_members"]) == len(members) - 1
    cluster = Cluster(rules)
    protocol = str(missing["protocol"])
    assert cluster.verdict(cluster.worker1, cluster.manager, protocol, missing.get("port_range_min")) == "DROP"


# --- what every filtered port gets -----------------------------------------------------


def test_replies_of_established_connections_enter_invalid_ones_do_not(cluster):
    assert cluster.verdict(None, cluster.worker1, "tcp", 50123, state="ESTABLISHED") == "ACCEPT"
    assert cluster.verdict(cluster.stranger, cluster.worker1, "tcp", 2377, state="RELATED") == "ACCEPT"
    # Neutron's order: established, the rules, INVALID dropped, the fallback
    assert cluster.verdict(cluster.stranger, cluster.worker1, "tcp", 2377, state="INVALID") == "DROP"


def test_spoofed_addresses_and_macs_are_dropped(cluster):
    assert cluster.verdict(cluster.worker1, None, "tcp", 443, src="10.10.0.12") == "DROP"
    assert cluster.verdict(cluster.worker1, None, "tcp", 443, mac="fa:16:3e:12:34:56") == "DROP"
    assert cluster.verdict(cluster.worker2, None, "tcp", 443, src="10.10.0.100") == "ACCEPT"   # allowed pair


def test_dhcp_from_clients_and_from_the_dhcp_port_only(cluster):
    def dhcp(source_ip, source, target, sport, dport, **extra):
        packet = cluster.packet(source, target, "udp", dport, src=source_ip, sport=sport, **extra)
        return packet

    discover = dhcp("0.0.0.0", cluster.worker1, None, 68, 67, dst="255.255.255.255")
    discover.physdev_out = cluster.dhcp_peer
    assert cluster.netfilter.forward(discover) == "ACCEPT"
    offer = dhcp("10.10.0.2", None, cluster.worker1, 67, 68, mac=cluster.dhcp["mac_address"])
    offer.physdev_in = cluster.dhcp_peer
    assert cluster.netfilter.forward(offer) == "ACCEPT"
    rogue = dhcp("10.10.0.11", cluster.worker1, cluster.worker2, 67, 68)
    assert cluster.netfilter.forward(rogue) == "DROP"


def test_router_dhcp_and_unsecured_ports_are_not_filtered(cluster):
    router_to_dhcp = cluster.packet(None, None, "udp", 53, dst="10.10.0.2")
    router_to_dhcp.physdev_out = cluster.dhcp_peer
    assert cluster.netfilter.forward(router_to_dhcp) == "ACCEPT"
    assert cluster.verdict(cluster.stranger, cluster.open_port, "tcp", 9999) == "ACCEPT"
    assert cluster.verdict(cluster.open_port, cluster.stranger, "tcp", 22, state="ESTABLISHED") == "ACCEPT"


def test_dockers_own_bridges_are_left_to_docker(cluster):
    packet = Packet(src="172.17.0.2", dst="172.17.0.3", dport=80, physdev_in="veth1", physdev_out="veth2",
                    in_interface="docker0", out_interface="docker0")
    assert cluster.netfilter.run("filter", firewall.FORWARD_CHAIN, packet) is None


def test_the_hosts_masquerade_never_rewrites_bridged_tenant_traffic(cluster):
    """The control plane masquerades 172.24.4.0/24 out of this machine; br_netfilter shows it bridged packets."""
    host_nat = ("*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j astro-POSTROUTING\n"
                "-A POSTROUTING -s 172.24.4.0/24 ! -o astro-ex -j MASQUERADE\nCOMMIT\n")
    netfilter = Netfilter(cluster.restore + host_nat)
    to_vm = Packet(src=HOST_ADDRESS, dst="10.10.0.10", dport=22, in_interface=cluster.bridge,
                   out_interface=cluster.bridge)          # DNATed by the router, on its way to the VM
    assert netfilter.nat("POSTROUTING", to_vm) is None
    uplink = Packet(src="172.24.4.20", dst="151.101.0.1", dport=443, out_interface="eth0", bridged=False)
    assert netfilter.nat("POSTROUTING", uplink) == ("MASQUERADE", "")


def test_each_network_has_its_own_conntrack_zone():
    world = World()
    net_a, subnet_a = world.network("10.20.0.0/24", "10.20.0.1")
    net_b, subnet_b = world.network("10.20.0.0/24", "10.20.0.1")
    world.port(net_a, subnet_a, "10.20.0.5")
    world.port(net_b, subnet_b, "10.20.0.5")
    state = desired_state(topology_from_payload(world.payload), Settings(), {net_a: 1, net_b: 2}, host="h")
    netfilter = Netfilter(firewall.render_restore(state))
    zones = {netfilter.zone(Packet(src="10.20.0.5", dst="10.20.0.1", in_interface=naming.network_bridge(n)))
             for n in (net_a, net_b)}
    assert zones == {1, 2}


# --- IPv6: the tenant subnets are IPv4, but the VMs' link-local IPv6 is filtered too -------


@pytest.fixture(scope="module")
def ipv6(cluster):
    return Netfilter(firewall.render_restore(cluster.state, version=6),
                     parse_ipset_restore(firewall.render_ipsets(cluster.state.ipsets6, "inet6")))


def _lla(port: dict) -> str:
    return firewall.link_local(port["mac_address"])


def test_link_local_address_is_the_macs_eui64():
    assert firewall.link_local("fa:16:3e:00:01:02") == "fe80::f816:3eff:fe00:102"


def test_ipv6_between_members_is_dropped_as_no_ipv6_rule_allows_it(cluster, ipv6):
    packet = cluster.packet(cluster.worker1, cluster.manager, "tcp", 7946,
                            src=_lla(cluster.worker1), dst=_lla(cluster.manager))
    assert ipv6.forward(packet) == "DROP"


def test_neighbour_discovery_passes_router_adverts_from_vms_do_not(cluster, ipv6):
    solicit = cluster.packet(cluster.worker1, cluster.manager, "ipv6-icmp", src=_lla(cluster.worker1),
                             dst="ff02::1:ff00:1", icmp_type=135)
    assert ipv6.forward(solicit) == "ACCEPT"
    dad = cluster.packet(cluster.worker1, cluster.manager, "ipv6-icmp", src="::", dst="ff02::1:ff00:1",
                         icmp_type=135)
    assert ipv6.forward(dad) == "ACCEPT"
    advert = cluster.packet(cluster.worker1, cluster.manager, "ipv6-icmp", src=_lla(cluster.worker1),
                            dst="ff02::1", icmp_type=134)
    assert ipv6.forward(advert) == "DROP"
    echo = cluster.packet(cluster.worker1, cluster.manager, "ipv6-icmp", src=_lla(cluster.worker1),
                          dst=_lla(cluster.manager), icmp_type=128)
    assert ipv6.forward(echo) == "DROP"


def test_spoofed_link_local_addresses_are_dropped(cluster, ipv6):
    solicit = cluster.packet(cluster.worker1, cluster.manager, "ipv6-icmp", src=_lla(cluster.worker2),
                             dst="ff02::1:ff00:1", icmp_type=135)
    assert ipv6.forward(solicit) == "DROP"


def test_an_ipv6_rule_with_a_remote_group_admits_the_groups_ipv6_members():
    world = World()
    net, subnet = world.network("10.30.0.0/24", "10.30.0.1")
    v6_subnet = new_id()
    world.payload["subnets"].append({"id": v6_subnet, "network_id": net, "cidr": "2001:db8::/64", "ip_version": 6,
                                     "gateway_ip": "2001:db8::1", "enable_dhcp": False})
    group = world.group("g6")
    world.rule(group, "ingress", "tcp", 80, 80, remote_group=group, ethertype="IPv6")
    web, client, other = (world.port(net, subnet, f"10.30.0.{n}", groups=(group,) if n < 12 else ())
                          for n in (10, 11, 12))
    for port, address in ((web, "2001:db8::10"), (client, "2001:db8::11"), (other, "2001:db8::12")):
        port["fixed_ips"].append({"subnet_id": v6_subnet, "ip_address": address})
    state = desired_state(topology_from_payload(world.payload), Settings(), {net: 1}, host="h")
    netfilter = Netfilter(firewall.render_restore(state, version=6),
                          parse_ipset_restore(firewall.render_ipsets(state.ipsets6, "inet6")))
    bridge = naming.network_bridge(net)

    def packet(source, src):
        return Packet(src=src, dst="2001:db8::10", dport=80, physdev_in=naming.tap_device(source["id"]),
                      physdev_out=naming.tap_device(web["id"]), in_interface=bridge, out_interface=bridge,
                      mac=source["mac_address"])

    assert netfilter.forward(packet(client, "2001:db8::11")) == "ACCEPT"
    assert netfilter.forward(packet(other, "2001:db8::12")) == "DROP"


# --- ARP and MAC anti-spoofing (ebtables) --------------------------------------------------


def test_a_port_may_only_arp_for_its_own_addresses_and_send_from_its_own_macs(cluster):
    bridge = Ebtables(firewall.render_ebtables(cluster.state))
    worker1, worker2 = cluster.worker1, cluster.worker2
    tap1, tap2 = cluster.tap(worker1), cluster.tap(worker2)
    assert bridge.verdict(Frame(tap1, worker1["mac_address"], arp_ip_src="10.10.0.11")) == "ACCEPT"
    assert bridge.verdict(Frame(tap1, worker1["mac_address"], arp_ip_src="0.0.0.0")) == "ACCEPT"      # a probe
    assert bridge.verdict(Frame(tap1, worker1["mac_address"], arp_ip_src="10.10.0.1")) == "DROP"     # the router's
    assert bridge.verdict(Frame(tap1, worker1["mac_address"], arp_ip_src="10.10.0.12")) == "DROP"
    assert bridge.verdict(Frame(tap2, worker2["mac_address"], arp_ip_src="10.10.0.100")) == "ACCEPT"  # its pair
    assert bridge.verdict(Frame(tap1, "fa:16:3e:99:99:99")) == "DROP"                                  # MAC spoof
    assert bridge.verdict(Frame(tap1, worker1["mac_address"])) == "ACCEPT"


def test_unfiltered_ports_and_other_bridges_are_not_touched_by_ebtables(cluster):
    bridge = Ebtables(firewall.render_ebtables(cluster.state))
    assert bridge.verdict(Frame(cluster.router_peer, "fa:16:3e:12:12:12", arp_ip_src="10.10.0.1")) == "ACCEPT"
    assert bridge.verdict(Frame(cluster.tap(cluster.open_port), "fa:16:3e:12:12:12", arp_ip_src="10.10.0.5")) \
        == "ACCEPT"
    assert bridge.verdict(Frame("veth0", "02:42:ac:11:00:02", arp_ip_src="172.17.0.2")) == "ACCEPT"


def test_stale_ebtables_chains_are_deleted():
    state = Cluster().state
    text = firewall.render_ebtables(state, existing={"astro-adeadbeef00", firewall.EB_CHAIN})
    assert [line for line in text.splitlines() if line.startswith("-X ")] == ["-X astro-adeadbeef00"]


# --- remote groups as ipsets, chains replaced whole ---------------------------------------


def test_remote_group_sets_hold_members_and_their_allowed_pairs(cluster):
    members = naming.security_group_ipset(next(
        g["id"] for g in cluster.world.payload["security_groups"] if g["name"] == "sg_members"))
    sets = parse_ipset_restore(firewall.render_ipsets(cluster.state.ipsets))
    assert sets[members] == {"10.10.0.10", "10.10.0.11", "10.10.0.12", "10.10.0.100"}
    assert set(sets) == set(cluster.state.ipsets)      # the temporary sets are gone again


def test_stale_chains_are_deleted_and_live_ones_replaced(cluster):
    gone = firewall.port_chain("i", "deadbeef-0000")
    live = firewall.port_chain("i", cluster.manager["id"])
    text = firewall.render_restore(cluster.state, {"filter": {gone, live, firewall.SG_CHAIN}, "raw": set()})
    netfilter = Netfilter(text)
    assert netfilter.deleted == {"filter": {gone}}
    assert netfilter.tables["filter"][live]


def test_chains_in_iptables_save_are_found_by_prefix():
    save = "*filter\n:INPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:astro-FORWARD - [0:0]\nCOMMIT\n*raw\n:astro-PREROUTING - [0:0]\n"
    assert firewall.chains_in_save(save) == {"filter": {"astro-FORWARD"}, "raw": {"astro-PREROUTING"}}
