"""A test network for container-VMs that needs no control plane: what Neutron's agents would give.

A Linux bridge ``t2br<n>``, and a namespace ``t2-net<n>`` plugged into it that
is the network's DHCP server (dnsmasq, one fixed address per MAC, router and
MTU options) and its metadata service (tests/functional/metadata_server.py on
169.254.169.254:80, reached through the router address, as a Neutron router
namespace redirects it). Every name starts with ``t2``; :meth:`T2Network.close`
removes all of it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

METADATA_SERVER = Path(__file__).with_name("metadata_server.py")
METADATA_ADDRESS = "169.254.169.254"
COMMAND_TIMEOUT_S = 30


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


@dataclass(frozen=True)
class Guest:
    """What the network knows of one VM: its MAC, address and metadata files."""

    mac: str
    ip: str
    hostname: str
    files: dict


@dataclass
class T2Network:
    index: int
    workdir: Path
    cidr: str = ""
    mtu: int = 1450
    bridge_name: str = ""            # the Nova driver's brq<network id> name, when it plugs the VMs
    guests: list[Guest] = field(default_factory=list)
    _processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self):
        self.cidr = self.cidr or f"10.250.{self.index}.0/24"
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def bridge(self) -> str:
        return self.bridge_name or f"t2br{self.index}"

    @property
    def namespace(self) -> str:
        return f"t2-net{self.index}"

    @property
    def router_ip(self) -> str:
        return str(ipaddress.ip_network(self.cidr)[1])

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen

    def address(self, host: int) -> str:
        return str(ipaddress.ip_network(self.cidr)[host])

    # --- up and down -----------------------------------------------------------------------

    def open(self) -> T2Network:
        self.close()
        sh("ip", "link", "add", self.bridge, "mtu", str(self.mtu), "type", "bridge", "stp_state", "0",
           "forward_delay", "0")
        sh("ip", "link", "set", self.bridge, "up")
        # bridged frames cross iptables here (br_netfilter), whose FORWARD policy is DROP
        sh("iptables", "-I", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment", "--comment",
           "t2-test", "-j", "ACCEPT")
        sh("ip", "netns", "add", self.namespace)
        sh("ip", "link", "add", f"t2ns{self.index}", "mtu", str(self.mtu), "type", "veth", "peer", "name", "eth0",
           "netns", self.namespace)
        sh("ip", "link", "set", f"t2ns{self.index}", "master", self.bridge, "up")
        self._in_namespace("ip", "addr", "add", f"{self.router_ip}/{self.prefixlen}", "dev", "eth0")
        self._in_namespace("ip", "link", "set", "eth0", "up")
        self._in_namespace("ip", "link", "set", "lo", "up")
        self._in_namespace("ip", "addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo")
        return self

    def close(self) -> None:
        for process in self._processes:
            process.kill()
            process.wait(timeout=COMMAND_TIMEOUT_S)
        self._processes.clear()
        sh("ip", "netns", "del", self.namespace, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        while sh("iptables", "-D", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "comment", "--comment",
                 "t2-test", "-j", "ACCEPT", check=False).returncode == 0:
            pass

    def _in_namespace(self, *argv: str) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.namespace, *argv)

    # --- DHCP and metadata -------------------------------------------------------------------

    def add_guest(self, guest: Guest) -> None:
        self.guests.append(guest)

    def serve(self) -> None:
        """Start dnsmasq and the metadata service for the guests added so far."""
        (self.workdir / "leases").unlink(missing_ok=True)
        hosts = self.workdir / "dhcp-hosts"
        hosts.write_text("".join(f"{g.mac},{g.ip},{g.hostname}\n" for g in self.guests))
        tree = self.workdir / "metadata.json"
        tree.write_text(json.dumps({g.ip: g.files for g in self.guests}))
        self._spawn("dnsmasq.log", "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                    "--interface=eth0", "--bind-interfaces", "--log-dhcp",
                    f"--dhcp-range={self.address(0)},static,{ipaddress.ip_network(self.cidr).netmask},12h",
                    f"--dhcp-hostsfile={hosts}", f"--dhcp-leasefile={self.workdir / 'leases'}",
                    f"--dhcp-option=option:router,{self.router_ip}", f"--dhcp-option=option:mtu,{self.mtu}")
        self._spawn("metadata.log", sys.executable, str(METADATA_SERVER), str(tree), "--bind", METADATA_ADDRESS)
        self._wait_listening()

    def _spawn(self, log_name: str, *argv: str) -> None:
        log = (self.workdir / log_name).open("w")
        self._processes.append(subprocess.Popen(["ip", "netns", "exec", self.namespace, *argv], stdout=log,
                                                stderr=subprocess.STDOUT))

    def _wait_listening(self, deadline_s: float = 10) -> None:
        deadline = time.monotonic() + deadline_s
        while "metadata service on" not in self.log("metadata.log"):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self._processes):
                raise RuntimeError(f"test network {self.namespace} did not start: {self.log('dnsmasq.log')} "
                                   f"{self.log('metadata.log')}")
            time.sleep(0.1)

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text() if path.exists() else ""
