"""The network agent's data plane on real Linux objects, without the control plane.

A whole "host" lives in the namespace ``t3-host`` (its bridges, its iptables
with FORWARD policy DROP as Docker leaves it, its ipsets, the external bridge
``t3-ex`` holding 172.24.4.1 as astro-ex does on the real machine), so nothing
here touches the machine's own namespace, astro-ex or the real services. The
agent's reconciler applies a hand-made Neutron state to it; "VMs" are
namespaces ``t3-vm*`` plugged exactly as the Nova driver plugs servers (veth
``tap<port[:11]>`` in ``brq<net[:11]>``, the peer as eth0 with the port's MAC,
no address), which get their address by DHCP (dhclient).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from localnet_helpers import DHCLIENT_SCRIPT, icmp_echo

from astrostack_localcloud import naming
from astrostack_localcloud.net import dataplane, firewall, netns
from astrostack_localcloud.net.agent import main as agent_main
from astrostack_localcloud.net.config import AgentConfig
from astrostack_localcloud.net.dataplane import Runner
from astrostack_localcloud.net.metadata import MetadataProxy, Upstream
from astrostack_localcloud.net.neutron_state import parse_port, topology_from_payload
from astrostack_localcloud.net.reconcile import Reconciler

pytestmark = pytest.mark.functional

HOST = "t3-host"
EXTERNAL_BRIDGE = "t3-ex"
GATEWAY = "172.24.4.1"
SECRET = "t3-shared-secret"
METADATA_PORT = 18775
ECHO_PORT = 5050
PROJECT = "7e57" + "0" * 28
TOOLS = ("ip", "iptables-restore", "ip6tables-restore", "ebtables-restore", "ipset", "dnsmasq", "dhclient",
         "conntrack", "curl")


def _require_environment() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, bridges, iptables)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing tools: {' '.join(missing)} (apt-get install iproute2 iptables ipset "
                    "dnsmasq-base isc-dhcp-client conntrack curl)")


def sh(*argv: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def in_ns(namespace: str, *argv: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", namespace, *argv, timeout=timeout, check=check)


def new_id() -> str:
    return str(uuid.uuid4())


def mac() -> str:
    return "fa:16:3e:%02x:%02x:%02x" % tuple(os.urandom(3))


# --- a hand-made Neutron ------------------------------------------------------------------


class World:
    """Neutron's JSON for: public, two tenant networks with the same CIDR (A and B), a router
    on each, security groups members / ssh / other, and VM ports."""

    def __init__(self):
        self.payload = {"networks": [], "subnets": [], "ports": [], "routers": [], "floatingips": [],
                        "security_groups": []}
        self.public, self.public_subnet = self.network("public", "172.24.4.0/24", GATEWAY, external=True)
        self.net_a, self.subnet_a = self.network("a", "10.93.0.0/24", "10.93.0.1")
        self.net_b, self.subnet_b = self.network("b", "10.93.0.0/24", "10.93.0.1")
        self.members = self.group("members")
        self.ssh = self.group("ssh")
        self.other = self.group("other")
        self.rule(self.members, "ingress", "tcp", 7946, 7946, remote_group=self.members)
        self.rule(self.members, "ingress", "icmp", remote_group=self.members)
        self.rule(self.members, "ingress", "50", remote_group=self.members)
        self.rule(self.ssh, "ingress", "tcp", 22, 22, prefix="0.0.0.0/0")
        self.router_a = self.router("172.24.4.20", self.net_a, self.subnet_a)
        self.router_b = self.router("172.24.4.21", self.net_b, self.subnet_b)
        self.port(self.net_a, self.subnet_a, "10.93.0.2", owner="network:dhcp")
        # network B's DHCP port is the agent's to create (FakeNeutronPorts)

    def network(self, name, cidr, gateway, external=False):
        net, sub = new_id(), new_id()
        self.payload["networks"].append({"id": net, "name": name, "mtu": 1500 if external else 1450,
                                         "router:external": external, "project_id": PROJECT,
                                         "provider:network_type": "flat" if external else "vxlan"})
        self.payload["subnets"].append({"id": sub, "network_id": net, "cidr": cidr, "ip_version": 4,
                                        "gateway_ip": gateway, "enable_dhcp": not external,
                                        "dns_nameservers": [] if external else ["172.24.4.1"],
                                        "host_routes": []})
        return net, sub

    def group(self, name):
        group = {"id": new_id(), "name": name, "security_group_rules": []}
        self.payload["security_groups"].append(group)
        self.rule(group["id"], "egress")                       # Neutron's default egress rules
        self.rule(group["id"], "egress", ethertype="IPv6")
        return group["id"]

    def rule(self, group_id, direction, protocol=None, low=None, high=None, prefix=None, remote_group=None,
             ethertype="IPv4"):
        group = next(g for g in self.payload["security_groups"] if g["id"] == group_id)
        group["security_group_rules"].append({
            "id": new_id(), "security_group_id": group_id, "direction": direction, "ethertype": ethertype,
            "protocol": protocol, "port_range_min": low, "port_range_max": high,
            "remote_ip_prefix": prefix, "remote_group_id": remote_group})

    def port(self, network, subnet, ip, owner="compute:nova", device=None, groups=(), port_id=None):
        body = {"id": port_id or new_id(), "network_id": network, "mac_address": mac(),
                "fixed_ips": [{"subnet_id": subnet, "ip_address": ip}], "device_owner": owner,
                "device_id": device or new_id(), "project_id": PROJECT, "security_groups": list(groups),
                "port_security_enabled": not owner.startswith("network:"), "allowed_address_pairs": [],
                "revision_number": 1}
        self.payload["ports"].append(body)
        return body

    def router(self, external_ip, network, subnet):
        router_id = new_id()
        self.payload["routers"].append({
            "id": router_id, "name": "r", "project_id": PROJECT, "admin_state_up": True,
            "external_gateway_info": {"network_id": self.public, "enable_snat": True, "external_fixed_ips": [
                {"subnet_id": self.public_subnet, "ip_address": external_ip}]}})
        self.port(self.public, self.public_subnet, external_ip, owner="network:router_gateway", device=router_id)
        self.port(network, subnet, "10.93.0.1", owner="network:router_interface", device=router_id)
        return router_id

    def floating_ip(self, address, port, router_id):
        self.payload["floatingips"].append({
            "id": new_id(), "floating_ip_address": address, "floating_network_id": self.public,
            "fixed_ip_address": port["fixed_ips"][0]["ip_address"], "port_id": port["id"], "router_id": router_id})

    def topology(self):
        return topology_from_payload(json.loads(json.dumps(self.payload)))


class FakeNeutronPorts:
    """The agent's DHCP port source: a POST /ports into the hand-made Neutron."""

    def __init__(self, world: World):
        self.world = world
        self.created: list[str] = []

    def create(self, network_id, subnet_ids, device_id, project_id):
        body = self.world.port(network_id, subnet_ids[0], "10.93.0.3", owner="network:dhcp", device=device_id)
        self.created.append(network_id)
        return parse_port(body)


# --- the test host, its services, its VMs -------------------------------------------------


class EchoServer:
    """Answers each TCP connection with the address it came from, then closes it."""

    def __init__(self, namespace: str | None, address: str, port: int):
        self.sock = netns.listening_socket((address, port), namespace)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(peer[0].encode() + b"\n")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class FakeNovaMetadata:
    """nova-metadata's check of a proxied request: the four headers, the HMAC; answers what it saw."""

    def __init__(self, namespace: str):
        self.seen: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 (http.server's naming)
                headers = {k: self.headers.get(k) for k in
                           ("X-Forwarded-For", "X-Instance-ID", "X-Tenant-ID", "X-Instance-ID-Signature")}
                outer.seen.append(headers)
                expected = hmac.new(SECRET.encode(), (headers["X-Instance-ID"] or "").encode(),
                                    hashlib.sha256).hexdigest()
                ok = headers["X-Instance-ID-Signature"] == expected
                body = json.dumps({"uuid": headers["X-Instance-ID"], "project_id": headers["X-Tenant-ID"],
                                   "address": headers["X-Forwarded-For"], "path": self.path}).encode()
                self.send_response(200 if ok else 403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((GATEWAY, METADATA_PORT), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = netns.listening_socket((GATEWAY, METADATA_PORT), namespace)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Vm:
    """A namespace plugged like a Nova server: tap<port> in brq<net>, eth0 with the port's MAC."""

    def __init__(self, name: str, port: dict, workdir: Path):
        self.name = name
        self.port = port
        self.ip = port["fixed_ips"][0]["ip_address"]
        self.workdir = workdir
        self.tap = naming.tap_device(port["id"])
        sh("ip", "netns", "add", name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        bridge = naming.network_bridge(port["network_id"])
        # As the Nova driver does: the guest end has the port's MAC from the start (its IPv6
        # link-local address derives from it), the MTU is left for DHCP to set.
        sh("ip", "-n", HOST, "link", "add", self.tap, "mtu", "1450", "type", "veth", "peer", "name", "eth0",
           "mtu", "1500", "address", port["mac_address"], "netns", name)
        sh("ip", "-n", HOST, "link", "set", self.tap, "master", bridge, "up")
        in_ns(name, "ip", "link", "set", "eth0", "up")

    def dhcp(self, script: Path, timeout: float) -> float:
        """dhclient once; returns the seconds to a lease."""
        started = time.monotonic()
        in_ns(self.name, "dhclient", "-1", "-4", "-sf", str(script), "-pf", str(self.workdir / f"{self.name}.pid"),
              "-lf", str(self.workdir / f"{self.name}.leases"), "eth0", timeout=timeout)
        return time.monotonic() - started

    def lease(self) -> dict[str, str]:
        lines = (self.workdir / f"{self.name}.lease").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def ping(self, address: str, source: str | None = None) -> bool:
        return icmp_echo(self.name, address, source=source)

    def connect(self, address: str, port: int, source: str | None = None, timeout: float = 2.0) -> str | None:
        """The address the peer saw, or None if the connection did not open."""
        with netns.entered(self.name):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            if source:
                sock.bind((source, 0))
            sock.connect((address, port))
            return sock.makefile().readline().strip()
        except OSError:
            return None
        finally:
            sock.close()

    def close(self) -> None:
        pid_file = self.workdir / f"{self.name}.pid"
        if pid_file.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text().strip()), 9)
        sh("ip", "netns", "delete", self.name, check=False)


@pytest.fixture(scope="module")
def host():
    """The namespace t3-host: a machine of its own with t3-ex (172.24.4.1/24), FORWARD DROP as Docker
    leaves it, and the control plane's MASQUERADE of the external network."""
    _require_environment()
    sh("ip", "netns", "delete", HOST, check=False)
    sh("ip", "netns", "add", HOST)
    in_ns(HOST, "ip", "link", "set", "lo", "up")
    # An uplink with an address of its own, first in line (as eth0 is on the machine): MASQUERADE's choice.
    in_ns(HOST, "ip", "link", "add", "t3-uplink", "type", "bridge")
    in_ns(HOST, "ip", "addr", "add", "198.51.100.2/24", "dev", "t3-uplink")
    in_ns(HOST, "ip", "link", "set", "t3-uplink", "up")
    in_ns(HOST, "ip", "link", "add", EXTERNAL_BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    in_ns(HOST, "ip", "addr", "add", f"{GATEWAY}/24", "dev", EXTERNAL_BRIDGE)
    in_ns(HOST, "ip", "link", "set", EXTERNAL_BRIDGE, "up")
    in_ns(HOST, "iptables", "-P", "FORWARD", "DROP")
    # What the control plane does on the real machine (and br_netfilter shows bridged packets too).
    in_ns(HOST, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.24.4.0/24", "!", "-o", EXTERNAL_BRIDGE,
          "-j", "MASQUERADE")
    assert in_ns(HOST, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables").stdout.strip() == "1"
    yield HOST
    sh("ip", "netns", "delete", HOST, check=False)


@pytest.fixture(scope="module")
def world():
    return World()


@pytest.fixture(scope="module")
def agent(host, world, tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("localnet")
    config = AgentConfig(external_bridge=EXTERNAL_BRIDGE, state_dir=state_dir, host="t3-test-host",
                         host_namespace=host, nova_metadata_host=GATEWAY, nova_metadata_port=METADATA_PORT,
                         metadata_secret=SECRET)
    reconciler = Reconciler(config, Runner(host), dhcp_ports=FakeNeutronPorts(world))
    reconciler.proxy = MetadataProxy(reconciler.lookup, Upstream(GATEWAY, METADATA_PORT, SECRET, namespace=host))
    nova = FakeNovaMetadata(host)
    echo = EchoServer(host, GATEWAY, ECHO_PORT)
    yield reconciler
    echo.close()
    nova.close()
    reconciler.proxy.close()
    reconciler.cleanup_all(sweep=False)


@pytest.fixture(scope="module")
def vms(agent, world, tmp_path_factory):
    """Four VMs: vm1 (members+ssh, floating IP), vm2 (members), vm3 (other) on A; vm4 (members) on B,
    with vm1's address."""
    workdir = tmp_path_factory.mktemp("vms")
    vm1 = world.port(world.net_a, world.subnet_a, "10.93.0.11", groups=(world.members, world.ssh))
    vm2 = world.port(world.net_a, world.subnet_a, "10.93.0.12", groups=(world.members,))
    vm3 = world.port(world.net_a, world.subnet_a, "10.93.0.13", groups=(world.other, world.ssh))
    vm4 = world.port(world.net_b, world.subnet_b, "10.93.0.11", groups=(world.members,))
    world.floating_ip("172.24.4.30", vm1, world.router_a)
    started = time.monotonic()
    outcome = agent.reconcile(world.topology())
    assert outcome.failures == {}
    assert agent.dhcp_ports.created == [world.net_b]          # B had no DHCP port: the agent made one
    ports_dir = agent.config.ports_dir
    assert sorted(p.name for p in ports_dir.iterdir()) == sorted(p["id"] for p in (vm1, vm2, vm3, vm4))
    print(f"first reconcile (2 networks, 2 routers, 4 VM ports) in {time.monotonic() - started:.2f} s")
    script = workdir / "dhclient-script"
    script.write_text(DHCLIENT_SCRIPT.replace("@DIR@", str(workdir)))
    script.chmod(0o755)
    machines = {}
    try:
        for index, port in enumerate((vm1, vm2, vm3, vm4), start=1):
            machines[f"vm{index}"] = Vm(f"t3-vm{index}", port, workdir)
        for vm in machines.values():
            print(f"{vm.name}: DHCP lease in {vm.dhcp(script, timeout=60):.2f} s")
        yield machines
    finally:
        for vm in machines.values():
            vm.close()


# --- the tests ----------------------------------------------------------------------------


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True



def test_dhcp_gives_address_mtu_router_and_metadata_route(vms, world):
    for vm in vms.values():
        lease = vm.lease()
        assert lease["new_ip_address"] == vm.ip
        assert lease["new_subnet_mask"] == "255.255.255.0"
        assert lease["new_interface_mtu"] == "1450"
        assert lease["new_routers"] == "10.93.0.1"
        assert lease["new_domain_name_servers"] == "172.24.4.1"
        assert int(lease["new_dhcp_lease_time"]) == 86400
        # option 121: 169.254.169.254/32 via the router, then the default route
        assert lease["new_rfc3442_classless_static_routes"] == "32 169 254 169 254 10 93 0 1 0 10 93 0 1"
        link = json.loads(in_ns(vm.name, "ip", "-j", "link", "show", "eth0").stdout)[0]
        assert link["mtu"] == 1450


def test_members_reach_each_other_and_others_do_not(vms):
    vm1, vm2, vm3 = vms["vm1"], vms["vm2"], vms["vm3"]
    server = EchoServer(vm2.name, "0.0.0.0", 7946)
    closed = EchoServer(vm2.name, "0.0.0.0", 7947)
    try:
        assert vm1.ping(vm2.ip)                         # icmp from the remote group
        assert vm1.connect(vm2.ip, 7946) == vm1.ip       # the open port, from a member
        assert vm1.connect(vm2.ip, 7947, timeout=1) is None    # listening, but not in the group's rules
        assert vm3.connect(vm2.ip, 7946, timeout=1) is None    # not a member
        assert not vm3.ping(vm2.ip)
    finally:
        server.close()
        closed.close()


def test_link_local_ipv6_is_filtered_but_neighbour_discovery_works(vms):
    vm1, vm2 = vms["vm1"], vms["vm2"]
    peer = firewall.link_local(vm2.port["mac_address"])
    for vm in (vm1, vm2):     # duplicate address detection first
        assert _wait_until(lambda vm=vm: "tentative" not in in_ns(vm.name, "ip", "-6", "addr", "show", "dev",
                                                                    "eth0").stdout, timeout=10)
    with netns.entered(vm2.name):
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    server.bind(("::", 7946))
    server.listen()
    try:
        with netns.entered(vm1.name):
            scope = socket.if_nametoindex("eth0")
            client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        client.settimeout(1)
        with pytest.raises(OSError):          # the group allows 7946 over IPv4 only
            client.connect((peer, 7946, 0, scope))
        client.close()
        assert not vm1.ping(peer)
        neighbour = in_ns(vm1.name, "ip", "-6", "neigh", "show", "dev", "eth0").stdout
        assert f"{peer} lladdr {vm2.port['mac_address']}" in neighbour, neighbour   # NS/NA went through
    finally:
        server.close()


def test_spoofed_source_is_dropped(vms):
    vm1, vm3 = vms["vm1"], vms["vm3"]
    server = EchoServer(vm1.name, "0.0.0.0", 22)
    try:
        assert vm3.connect(vm1.ip, 22) == vm3.ip        # ssh is open to everyone
        in_ns(vm3.name, "ip", "addr", "add", "10.93.0.99/24", "dev", "eth0")
        assert vm3.connect(vm1.ip, 22, source="10.93.0.99", timeout=1) is None
        in_ns(vm3.name, "ip", "addr", "del", "10.93.0.99/24", "dev", "eth0")
        assert vm3.connect(vm1.ip, 22) == vm3.ip
    finally:
        server.close()


def test_arp_for_someone_elses_address_is_dropped(vms):
    """vm3 announces vm1's address as its own: vm2's neighbour table must keep vm1's MAC."""
    vm1, vm2, vm3 = vms["vm1"], vms["vm2"], vms["vm3"]
    assert vm2.ping(vm1.ip)

    def vm2_sees() -> str:
        return in_ns(vm2.name, "ip", "neigh", "show", vm1.ip, "dev", "eth0").stdout

    assert vm1.port["mac_address"] in vm2_sees()
    time.sleep(1.1)            # past the neighbour entry's locktime, so a gratuitous ARP could win
    dataplane.gratuitous_arp(vm3.name, "eth0", vm3.port["mac_address"], vm1.ip, count=3)
    time.sleep(0.2)
    assert vm3.port["mac_address"] not in vm2_sees() and vm1.port["mac_address"] in vm2_sees()


def test_router_snat_and_floating_ip(vms):
    vm1, vm2, vm4 = vms["vm1"], vms["vm2"], vms["vm4"]
    assert vm2.connect(GATEWAY, ECHO_PORT) == "172.24.4.20"     # SNAT to the router's gateway
    assert vm1.connect(GATEWAY, ECHO_PORT) == "172.24.4.30"     # SNAT to its floating IP
    assert vm4.connect(GATEWAY, ECHO_PORT) == "172.24.4.21"     # same address, other network, other router
    server = EchoServer(vm1.name, "0.0.0.0", 22)
    try:
        with netns.entered(HOST):
            sock = socket.create_connection(("172.24.4.30", 22), timeout=3)
        with sock:
            assert sock.makefile().readline().strip() == GATEWAY   # the host's own address, not NATed
    finally:
        server.close()


def test_metadata_proxy_signs_for_the_instance(vms, world):
    for vm in (vms["vm2"], vms["vm4"]):
        done = in_ns(vm.name, "curl", "-sS", "-m", "5", "-w", "\n%{http_code}",
                     "http://169.254.169.254/openstack/latest/meta_data.json")
        body, status = done.stdout.rsplit("\n", 1)
        assert status == "200", done.stdout
        answer = json.loads(body)
        assert answer == {"uuid": vm.port["device_id"], "project_id": PROJECT, "address": vm.ip,
                          "path": "/openstack/latest/meta_data.json"}


def test_conntrack_zones_keep_overlapping_networks_apart(vms, agent, world):
    zone_a = agent.state.zones[naming.network_bridge(world.net_a)]
    zone_b = agent.state.zones[naming.network_bridge(world.net_b)]
    assert zone_a != zone_b
    vms["vm1"].ping("10.93.0.1")
    vms["vm4"].ping("10.93.0.1")
    for zone in (zone_a, zone_b):
        listed = in_ns(HOST, "conntrack", "-L", "-w", str(zone), "-s", "10.93.0.11", check=False)
        assert "10.93.0.11" in listed.stdout + listed.stderr


def _host_reaches(address: str, port: int, timeout: float = 0.5) -> str | None:
    """The address the listener behind ``address`` reports, from the host namespace."""
    with netns.entered(HOST):
        sock = socket.socket()
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
        return sock.makefile().readline().strip()
    except OSError:
        return None
    finally:
        sock.close()


def test_floating_ip_moves_to_a_server_behind_another_router(vms, agent, world):
    """The FIP leaves router A's qg- for router B's: a gratuitous ARP updates the host at once."""
    vm1, vm4 = vms["vm1"], vms["vm4"]
    servers = [EchoServer(vm.name, "0.0.0.0", 22) for vm in (vm1, vm4)]
    vm4_groups = vm4.port["security_groups"]
    try:
        assert _host_reaches("172.24.4.30", 22) == GATEWAY           # vm1, and the host learns router A's MAC
        vm4.port["security_groups"] = vm4_groups + [world.ssh]
        fip = world.payload["floatingips"][0]
        fip.update(port_id=vm4.port["id"], fixed_ip_address=vm4.ip, router_id=world.router_b)
        assert agent.reconcile(world.topology()).failures == {}
        started = time.monotonic()
        assert _wait_until(lambda: _host_reaches("172.24.4.30", 22) == GATEWAY and
                           vm4.connect(GATEWAY, ECHO_PORT) == "172.24.4.30", timeout=3)
        print(f"floating IP answered from the other router after {time.monotonic() - started:.2f} s")
        fip.update(port_id=vm1.port["id"], fixed_ip_address=vm1.ip, router_id=world.router_a)
        vm4.port["security_groups"] = vm4_groups
        assert agent.reconcile(world.topology()).failures == {}
        assert _wait_until(lambda: vm1.connect(GATEWAY, ECHO_PORT) == "172.24.4.30", timeout=3)
    finally:
        for server in servers:
            server.close()


def test_floating_ip_disassociation_and_port_removal(vms, agent, world):
    vm1, vm3 = vms["vm1"], vms["vm3"]
    world.payload["floatingips"].clear()
    world.payload["ports"] = [p for p in world.payload["ports"] if p["id"] != vm3.port["id"]]
    started = time.monotonic()
    outcome = agent.reconcile(world.topology())
    print(f"reconcile after a FIP and a port went: {time.monotonic() - started:.2f} s, {outcome.actions}")
    assert outcome.failures == {}
    assert vm1.connect(GATEWAY, ECHO_PORT) == "172.24.4.20"
    with netns.entered(HOST):
        probe = socket.socket()
    probe.settimeout(1)
    with pytest.raises(OSError):
        probe.connect(("172.24.4.30", 22))
    probe.close()
    assert not (agent.config.ports_dir / vm3.port["id"]).exists()
    chains = firewall.chains_in_save(in_ns(HOST, "iptables-save", "-t", "filter").stdout)["filter"]
    assert firewall.port_chain("i", vm3.port["id"]) not in chains
    assert firewall.port_chain("i", vm1.port["id"]) in chains


def test_an_unchanged_reconcile_does_nothing(vms, agent, world):
    started = time.monotonic()
    outcome = agent.reconcile(world.topology())
    elapsed = time.monotonic() - started
    print(f"unchanged reconcile: {elapsed:.3f} s")  # a figure, not a target: the tests run beside others
    assert outcome.failures == {} and outcome.actions == []


def _our_host_links() -> list[str]:
    host_links = json.loads(in_ns(HOST, "ip", "-j", "link", "show").stdout)
    return [link["ifname"] for link in host_links if link["ifname"].startswith(("tqr-", "tqg-", "tns-"))]


def test_cleanup_all_leaves_nothing(vms, agent, world, tmp_path):
    """``astrostack-localnet --cleanup-all`` (the agent stopped first, as the control plane does)."""
    ids = [world.router_a, world.router_b, world.net_a, world.net_b]
    agent.proxy.close()
    conf = tmp_path / "localnet.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {agent.config.state_dir}\nhost_namespace = {HOST}\n"
                    f"host = t3-test-host\n[external]\nbridge = {EXTERNAL_BRIDGE}\n")
    assert agent_main(["--config-file", str(conf), "--cleanup-all"]) == 0
    assert [n for n in os.listdir(netns.NETNS_DIR) if any(i in n for i in ids)] == []
    # A deleted namespace's veths go when the kernel has finished with it, a moment later.
    assert _wait_until(lambda: _our_host_links() == [], timeout=10), _our_host_links()
    leftovers = firewall.chains_in_save(in_ns(HOST, "iptables-save").stdout)
    assert all(not chains for chains in leftovers.values()), leftovers
    assert "astro-FORWARD" not in in_ns(HOST, "iptables", "-S", "FORWARD").stdout
    assert in_ns(HOST, "ipset", "list", "-n").stdout.split() == []
    assert list(agent.config.ports_dir.iterdir()) == []
    processes = sh("ps", "-eo", "args").stdout.splitlines()
    assert [line for line in processes if str(agent.config.dhcp_dir) in line] == []
