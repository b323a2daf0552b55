"""dnsmasq's files and command line, and a router's NAT, parsed back and judged by meaning."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from localnet_world import Netfilter, Packet, World

from astrostack_localcloud import naming
from astrostack_localcloud.net import dhcp, router
from astrostack_localcloud.net.desired import Settings, desired_state
from astrostack_localcloud.net.neutron_state import topology_from_payload


@pytest.fixture(scope="module")
def cloud():
    world = World()
    public = world.network("172.24.4.0/24", "172.24.4.1", external=True)
    net, subnet = world.network("10.1.0.0/24", "10.1.0.1", dns=("172.24.4.1", "9.9.9.9"))
    world.port(net, subnet, "10.1.0.2", owner="network:dhcp")
    manager = world.port(net, subnet, "10.1.0.10")
    worker = world.port(net, subnet, "10.1.0.11")
    router_id = world.router(public, "172.24.4.20", [(net, subnet, "10.1.0.1")])
    world.floating_ip("172.24.4.30", manager, router_id)
    state = desired_state(topology_from_payload(world.payload), Settings(), {net: 1}, host="h")
    return {"world": world, "state": state, "net": net, "subnet": subnet, "manager": manager, "worker": worker,
            "router": state.routers[router_id], "server": state.dhcp[net]}


def parse_options(text: str) -> dict[tuple[str, str], list[str]]:
    """opts file -> (tag, option) -> values."""
    options = {}
    for line in text.splitlines():
        tag, option, *values = line.split(",")
        options[(tag.removeprefix("tag:"), option)] = values
    return options


def test_hosts_file_gives_each_mac_its_address_and_name(cloud):
    lines = [line.split(",") for line in dhcp.render_hosts(cloud["server"]).splitlines()]
    by_mac = {mac: (name, ip) for mac, name, ip in lines}
    assert by_mac[cloud["manager"]["mac_address"]] == ("host-10-1-0-10.openstacklocal", "10.1.0.10")
    assert by_mac[cloud["worker"]["mac_address"]] == ("host-10-1-0-11.openstacklocal", "10.1.0.11")


def test_options_router_dns_and_classless_routes_per_subnet(cloud):
    options = parse_options(dhcp.render_options(cloud["server"]))
    tag = dhcp.subnet_tag(cloud["subnet"])
    assert options[(tag, "option:router")] == ["10.1.0.1"]
    assert options[(tag, "option:dns-server")] == ["172.24.4.1", "9.9.9.9"]
    routes = options[(tag, "option:classless-static-route")]
    assert list(zip(routes[::2], routes[1::2])) == [("169.254.169.254/32", "10.1.0.1"), ("0.0.0.0/0", "10.1.0.1")]
    assert options[(tag, "249")] == routes


def test_dnsmasq_command_line_serves_static_leases_on_the_dhcp_port_with_the_mtu(cloud, tmp_path):
    argv = dhcp.dnsmasq_argv(cloud["server"], dhcp.DhcpFiles(tmp_path))
    assert argv[0] == "dnsmasq"
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:] if "=" in arg)
    assert flags["interface"] == cloud["server"].veth.inner
    tag, network, mode, netmask, lease = flags["dhcp-range"].split(",")
    assert (tag, network, mode, netmask, lease) == (f"set:{dhcp.subnet_tag(cloud['subnet'])}", "10.1.0.0",
                                                    "static", "255.255.255.0", "86400s")
    assert flags["dhcp-option-force"] == "option:mtu,1450"
    assert Path(flags["dhcp-hostsfile"]) == tmp_path / "host" and Path(flags["pid-file"]) == tmp_path / "pid"
    assert "--bind-dynamic" in argv and flags["conf-file"] == "/dev/null"


def router_tables(config) -> Netfilter:
    return Netfilter(router.render_restore(config))


def test_floating_ip_is_dnat_in_and_snat_out(cloud):
    config = cloud["router"]
    tables = router_tables(config)
    qg = config.gateway_device
    inbound = Packet(src="172.24.4.1", dst="172.24.4.30", dport=22, in_interface=qg)
    assert tables.nat("PREROUTING", inbound) == ("DNAT", "10.1.0.10")
    outbound = Packet(src="10.1.0.10", dst="172.24.4.1", dport=5050, out_interface=qg, state="NEW")
    assert tables.nat("POSTROUTING", outbound) == ("SNAT", "172.24.4.30")


def test_other_servers_leave_with_the_gateway_address_and_internal_traffic_keeps_its(cloud):
    config = cloud["router"]
    tables = router_tables(config)
    out = Packet(src="10.1.0.11", dst="172.24.4.1", dport=5050, out_interface=config.gateway_device)
    assert tables.nat("POSTROUTING", out) == ("SNAT", "172.24.4.20")
    inside = Packet(src="10.1.0.11", dst="10.2.0.5", out_interface="qr-other", state="NEW")
    assert tables.nat("POSTROUTING", inside) is None


def test_metadata_requests_from_qr_devices_go_to_the_proxy_port_only_those(cloud):
    tables = router_tables(cloud["router"])
    request = Packet(src="10.1.0.11", dst=naming.METADATA_ADDRESS, dport=80, in_interface="qr-1234567890a")
    assert tables.nat("PREROUTING", request) == ("REDIRECT", str(naming.METADATA_PROXY_PORT))
    from_outside = Packet(src="172.24.4.1", dst=naming.METADATA_ADDRESS, dport=80,
                          in_interface=cloud["router"].gateway_device)
    assert tables.nat("PREROUTING", from_outside) is None
    filter_rules = tables.tables["filter"]["INPUT"]
    assert [r.target for r in filter_rules] == ["ACCEPT", "DROP"]       # marked requests only


def test_without_snat_only_floating_ips_are_translated(cloud):
    config = replace(cloud["router"], snat=False)
    tables = router_tables(config)
    out = Packet(src="10.1.0.11", dst="172.24.4.1", dport=5050, out_interface=config.gateway_device)
    assert tables.nat("POSTROUTING", out) is None
    fip = Packet(src="10.1.0.10", dst="172.24.4.1", dport=5050, out_interface=config.gateway_device)
    assert tables.nat("POSTROUTING", fip) == ("SNAT", "172.24.4.30")


def test_a_lease_whose_address_went_to_another_mac_is_stale_and_only_that_one(cloud):
    server = cloud["server"]
    kept = next(h for h in server.hosts if h.ip == "10.1.0.10")
    leases = (f"1900000000 {kept.mac.upper()} {kept.ip} manager 01:{kept.mac}\n"
              f"1900000000 fa:16:3e:00:00:99 10.1.0.11 old-worker *\n"     # 10.1.0.11 is now another MAC's
              "duid 00:01:00:01:2c:aa:bb:cc:fa:16:3e:00:00:01\n"
              "1900000000 12345678 fd00::5 v6-host 00:01\n")
    stale = dhcp.stale_leases(leases, server)
    assert stale == ["1900000000 fa:16:3e:00:00:99 10.1.0.11 old-worker *"]
    pruned = dhcp.without_leases(leases, stale)
    assert "10.1.0.11" not in pruned and kept.ip in pruned and "duid" in pruned and "fd00::5" in pruned
    assert dhcp.stale_leases(pruned, server) == []
