"""Neutron JSON -> the desired data plane: DHCP servers, routers, metadata targets, port
records, conntrack zones; and the agent's config as the control plane writes it."""

from __future__ import annotations

import textwrap

import pytest
from localnet_world import PROJECT, World, new_id

from astrostack_localcloud import naming
from astrostack_localcloud.net import config as agent_config
from astrostack_localcloud.net.desired import Settings, desired_state, dhcp_device_id
from astrostack_localcloud.net.neutron_state import topology_from_payload
from astrostack_localcloud.net.reconcile import ZoneBook


@pytest.fixture()
def world() -> World:
    return World()


def state_of(world: World, zones: dict | None = None, **settings):
    topology = topology_from_payload(world.payload)
    zones = zones if zones is not None else {n: i + 1 for i, n in enumerate(sorted(topology.networks))}
    return desired_state(topology, Settings(**settings), zones, host="node-1")


def test_neutron_json_fields_are_read_as_neutron_means_them(world):
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1")
    group = world.group("g")
    world.rule(group, "ingress", "50", remote_group=group)
    world.rule(group, "ingress", "TCP", "22", "22", prefix="10.0.0.0/8")
    world.port(net, subnet, "10.1.0.9", groups=(group,))
    topology = topology_from_payload(world.payload)
    rules = {r.protocol: r for r in topology.security_groups[group].rules if r.direction == "ingress"}
    assert rules["50"].remote_group_id == group and rules["50"].port_range_min is None
    assert rules["tcp"].port_range_min == 22 and rules["tcp"].remote_ip_prefix == "10.0.0.0/8"
    assert topology.networks[net].project_id == PROJECT          # from tenant_id, as older APIs answer
    assert topology.networks[net].mtu == 1450


def test_a_dhcp_network_without_its_port_asks_for_one(world):
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1")
    world.network("10.2.0.0/24", "10.2.0.1", dhcp=False)
    state = state_of(world)
    assert state.networks_without_dhcp_port == (net,)
    assert state.dhcp == {}
    world.port(net, subnet, "10.1.0.2", owner="network:dhcp", device_id=dhcp_device_id("node-1", net))
    assert set(state_of(world).dhcp) == {net}


def test_dhcp_server_serves_every_port_with_router_dns_mtu_and_metadata_route(world):
    public = world.network("172.24.4.0/24", "172.24.4.1", external=True)
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1", dns=("9.9.9.9",))
    dhcp = world.port(net, subnet, "10.1.0.2", owner="network:dhcp")
    vm = world.port(net, subnet, "10.1.0.20")
    named = world.port(net, subnet, "10.1.0.21", dns_name="manager")
    world.router(public, "172.24.4.20", [(net, subnet, "10.1.0.1")])
    server = state_of(world).dhcp[net]
    assert server.namespace == naming.dhcp_namespace(net)
    assert server.veth.inner == naming.dhcp_device(dhcp["id"]) and server.veth.mac == dhcp["mac_address"]
    assert server.veth.addresses == ("10.1.0.2/24",) and server.veth.bridge == naming.network_bridge(net)
    assert server.mtu == 1450 and server.default_gateway == "10.1.0.1"
    hosts = {h.ip: (h.mac, h.fqdn) for h in server.hosts}
    assert hosts["10.1.0.20"] == (vm["mac_address"], "host-10-1-0-20.openstacklocal")
    assert hosts["10.1.0.21"] == (named["mac_address"], "manager.openstacklocal")
    assert set(hosts) == {"10.1.0.1", "10.1.0.2", "10.1.0.20", "10.1.0.21"}   # router and DHCP ports too
    (dhcp_subnet,) = server.subnets
    assert dhcp_subnet.gateway == "10.1.0.1" and dhcp_subnet.dns_servers == ("9.9.9.9",)
    assert dhcp_subnet.classless_routes == (("169.254.169.254/32", "10.1.0.1"), ("0.0.0.0/0", "10.1.0.1"))


def test_an_isolated_subnet_gets_no_metadata_route_and_dns_from_the_dhcp_port(world):
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1")
    world.port(net, subnet, "10.1.0.2", owner="network:dhcp")
    (dhcp_subnet,) = state_of(world).dhcp[net].subnets
    assert dhcp_subnet.classless_routes == ()
    assert dhcp_subnet.dns_servers == ("10.1.0.2",)


def test_router_has_its_interfaces_gateway_floating_ips_and_snat(world):
    public = world.network("172.24.4.0/24", "172.24.4.1", external=True)
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1")
    vm = world.port(net, subnet, "10.1.0.20")
    router_id = world.router(public, "172.24.4.20", [(net, subnet, "10.1.0.1")])
    world.floating_ip("172.24.4.33", vm, router_id)
    config = state_of(world, external_bridge="t-ex").routers[router_id]
    (internal,) = config.internal
    assert internal.inner.startswith("qr-") and internal.bridge == naming.network_bridge(net)
    assert internal.addresses == ("10.1.0.1/24",) and internal.mtu == 1450
    assert config.gateway.bridge == "t-ex" and config.gateway.inner.startswith("qg-")
    assert config.gateway.addresses == ("172.24.4.20/24", "172.24.4.33/32") and config.gateway.mtu == 1500
    assert config.gateway_ip == "172.24.4.20" and config.external_gateway == "172.24.4.1" and config.snat
    assert [(m.floating_ip, m.fixed_ip) for m in config.floating] == [("172.24.4.33", "10.1.0.20")]


def test_a_router_without_gateway_only_routes_between_its_networks(world):
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1")
    router_id = new_id()
    world.payload["routers"].append({"id": router_id, "name": "r", "tenant_id": PROJECT,
                                     "admin_state_up": True, "external_gateway_info": None})
    world.port(net, subnet, "10.1.0.1", owner="network:router_interface", device_id=router_id)
    config = state_of(world).routers[router_id]
    assert config.gateway is None and config.floating == () and len(config.internal) == 1


def test_metadata_targets_map_source_addresses_behind_each_router_to_instances(world):
    public = world.network("172.24.4.0/24", "172.24.4.1", external=True)
    net_a, subnet_a = world.network("10.1.0.0/24", "10.1.0.1")
    net_b, subnet_b = world.network("10.1.0.0/24", "10.1.0.1")      # the same CIDR, another network
    vm_a = world.port(net_a, subnet_a, "10.1.0.20", device_id="instance-a")
    vm_b = world.port(net_b, subnet_b, "10.1.0.20", device_id="instance-b")
    router_a = world.router(public, "172.24.4.20", [(net_a, subnet_a, "10.1.0.1")])
    router_b = world.router(public, "172.24.4.21", [(net_b, subnet_b, "10.1.0.1")])
    targets = state_of(world).metadata_targets
    assert targets[(router_a, "10.1.0.20")].instance_id == vm_a["device_id"]
    assert targets[(router_b, "10.1.0.20")].instance_id == vm_b["device_id"]
    assert targets[(router_a, "10.1.0.20")].project_id == PROJECT
    assert (router_a, "10.1.0.1") not in targets        # the router's own port is no instance


def test_port_records_for_servers_ports_not_for_the_networks_own(world):
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1")
    world.port(net, subnet, "10.1.0.2", owner="network:dhcp")
    vm = world.port(net, subnet, "10.1.0.20")
    unbound = world.port(net, subnet, "10.1.0.21", owner="", device_id="")
    records = state_of(world).port_records
    assert set(records) == {vm["id"], unbound["id"]}
    assert records[vm["id"]].as_json() == {"mac": vm["mac_address"], "ips": ["10.1.0.20"], "revision": 3,
                                           "network_id": net, "bridge": naming.network_bridge(net), "mtu": 1450}


def test_ports_without_port_security_and_network_ports_are_not_filtered(world):
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1")
    world.port(net, subnet, "10.1.0.2", owner="network:dhcp")
    filtered = world.port(net, subnet, "10.1.0.20")
    world.port(net, subnet, "10.1.0.21", security=False)
    assert [p.port_id for p in state_of(world).filtered_ports] == [filtered["id"]]


def test_zones_stay_with_their_networks_and_are_reused_when_freed(tmp_path):
    book = ZoneBook(tmp_path / "zones.json")
    assert book.assign(["a", "b"]) == {"a": 1, "b": 2}
    assert book.assign(["b", "c"]) == {"b": 2, "c": 1}
    assert ZoneBook(tmp_path / "zones.json").assign(["b", "c", "d"]) == {"b": 2, "c": 1, "d": 3}


CONTROL_PLANE_CONF = """\
    # Written by `astrostack local start` from a template; edits are overwritten.
    [DEFAULT]
    state_dir = {local}/net
    log_file = {local}/logs/astrostack-localnet.log
    region = RegionOne

    [neutron]
    auth_url = http://172.24.4.1:15000/v3
    username = neutron
    password = pw
    project_name = service
    user_domain_name = Default
    project_domain_name = Default
    endpoint = http://172.24.4.1:19696

    [notifications]
    transport_url = rabbit://u:p@127.0.0.1:17672/
    topic = notifications

    [metadata]
    nova_metadata_url = http://172.24.4.1:18775
    metadata_proxy_shared_secret = s3cret

    [external]
    bridge = astro-ex
    cidr = 172.24.4.0/24
    gateway = 172.24.4.1
"""


def test_the_control_planes_config_file_is_read_whole(tmp_path):
    path = tmp_path / "localnet.conf"
    path.write_text(textwrap.dedent(CONTROL_PLANE_CONF).format(local=tmp_path))
    config = agent_config.load(path)
    assert config.state_dir == tmp_path / "net" and config.ports_dir == tmp_path / "net" / "ports"
    assert dict(config.credentials) == {
        "auth_url": "http://172.24.4.1:15000/v3", "username": "neutron", "password": "pw",
        "project_name": "service", "user_domain_name": "Default", "project_domain_name": "Default",
        "region_name": "RegionOne", "network_endpoint_override": "http://172.24.4.1:19696"}
    assert config.transport_url == "rabbit://u:p@127.0.0.1:17672/" and config.notification_topics == ("notifications",)
    assert (config.nova_metadata_host, config.nova_metadata_port) == ("172.24.4.1", 18775)
    assert config.metadata_secret == "s3cret" and config.external_bridge == "astro-ex"
    assert config.host_namespace is None and config.resync_interval == 30


def test_a_missing_or_wrong_config_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(agent_config.ConfigError, match="no such config file"):
        agent_config.load(tmp_path / "absent.conf")
    path = tmp_path / "bad.conf"
    path.write_text("[DEFAULT]\nresync_interval = soon\n")
    with pytest.raises(agent_config.ConfigError, match="resync_interval"):
        agent_config.load(path)


def test_local_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTROSTACK_LOCAL_DIR", str(tmp_path / "x"))
    assert agent_config.default_config_path() == tmp_path / "x" / "etc" / "localnet" / "localnet.conf"
    monkeypatch.delenv("ASTROSTACK_LOCAL_DIR")
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "h"))
    assert agent_config.local_dir() == tmp_path / "h" / "local"
