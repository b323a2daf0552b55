"""The host side of the external network `public`: bridge, gateway address, NAT.

The Linux bridge ``naming.EXTERNAL_BRIDGE`` (``astro-ex``) in this machine's
root namespace carries the external network; the gateway address
(172.24.4.1/24) lives on it and every API binds there. Routers' ``qg-``
devices join the bridge; this machine forwards and MASQUERADEs their traffic
out of its other interfaces. Docker sets the FORWARD policy to DROP, so the
range gets explicit accepts; a host firewall's INPUT policy (ufw, a DROP
policy) would keep the VMs from the APIs, so the ports they use get one too.
Every step checks before it changes anything.

After a start, :func:`unreachable_from_vm_side` connects to those ports from
a namespace of its own on the bridge, the way a router's gateway port does:
a rule above ours (a REJECT left behind, a firewall of another tool) fails the
start naming the ports, instead of every VM failing to signal Heat later.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

from astrostack.errors import LocalCloudError
from astrostack.local import commands, layout

Progress = Callable[[str], None]
COMMENT = "astrostack-local-external"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def bridge_name() -> str:
    from astrostack_localcloud import naming

    return naming.EXTERNAL_BRIDGE


def _ip(*args: str) -> str:
    return commands.run(["ip", *args], f"ip {' '.join(args)}", timeout=20)


def bridge_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}/bridge").is_dir()


def ensure_bridge(name: str, gateway: str, prefixlen: int) -> bool:
    """The bridge, up, with the gateway address; True if anything changed."""
    changed = False
    if not bridge_exists(name):
        _ip("link", "add", name, "type", "bridge")
        changed = True
    address = f"{gateway}/{prefixlen}"
    if address not in _ip("-4", "-o", "addr", "show", "dev", name):
        _ip("addr", "add", address, "dev", name)
        changed = True
    if "UP" not in _link_flags(name):
        _ip("link", "set", name, "up")
        changed = True
    return changed


def _link_flags(name: str) -> list[str]:
    """The interface's flags (BROADCAST, MULTICAST, UP, ...) from ``ip -o link show``."""
    output = _ip("-o", "link", "show", name)
    return output.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in output else []


def ensure_ip_forward() -> bool:
    if IP_FORWARD.read_text().strip() == "1":
        return False
    IP_FORWARD.write_text("1\n")
    return True


def host_rules(cidr: str, bridge: str, ports: Iterable[int]) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) of every iptables rule the external network needs; ``ports``
    are the TCP ports of this machine the VMs reach over it."""
    tag = ["-m", "comment", "--comment", COMMENT]
    vm_facing = ",".join(str(port) for port in sorted(ports))
    return [
        ("filter", "INPUT", ["-i", bridge, "-p", "tcp", "-m", "multiport", "--dports", vm_facing,
                             *tag, "-j", "ACCEPT"]),
        # Not bridged traffic (a tenant bridge's packets pass POSTROUTING through br_netfilter too).
        ("nat", "POSTROUTING", ["-s", cidr, "!", "-o", bridge, "-m", "physdev", "!", "--physdev-is-bridged",
                                *tag, "-j", "MASQUERADE"]),
        ("filter", "FORWARD", ["-s", cidr, *tag, "-j", "ACCEPT"]),
        ("filter", "FORWARD", ["-d", cidr, *tag, "-j", "ACCEPT"]),
    ]


def ensure_rule(table: str, chain: str, rule: list[str]) -> bool:
    """Insert the rule at the top of the chain unless it is there (iptables -C)."""
    if commands.succeeds(["iptables", "-w", "10", "-t", table, "-C", chain, *rule], timeout=20):
        return False
    commands.run(["iptables", "-w", "10", "-t", table, "-I", chain, "1", *rule],
                 f"add iptables rule to {table}/{chain}", timeout=20)
    return True


def ensure(say: Progress) -> None:
    """Bridge, address, forwarding and NAT for the external network (idempotent)."""
    net = layout.external_net()
    bridge = bridge_name()
    changed = ensure_bridge(bridge, net.gateway, net.prefixlen)
    changed |= ensure_ip_forward()
    for table, chain, rule in host_rules(net.cidr, bridge, layout.vm_facing_ports().values()):
        changed |= ensure_rule(table, chain, rule)
    if changed:
        say(f"external network: bridge {bridge} {net.gateway}/{net.prefixlen}, forwarding and NAT of {net.cidr}")


# The VMs' side of the bridge, for a moment: a namespace and a veth of the check's own.
VM_SIDE_NAMESPACE = "astro-vmside"
VM_SIDE_BRIDGE_END, VM_SIDE_INNER_END = "astro-vms0", "astro-vms1"
CONNECT_TIMEOUT_S = 3.0
# Run inside the namespace: connect to each port, print {name: why} of those that failed.
_CONNECT_EACH = """
import json, socket, sys
host, ports, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
failed = {}
for name, port in ports.items():
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        failed[name] = f"{port}: {exc.strerror or exc.__class__.__name__}"
print(json.dumps(failed))
"""


def unreachable_from_vm_side(ports: dict[str, int]) -> dict[str, str]:
    """{service: why} of the ``ports`` on the gateway that a VM could not connect to,
    tried from an address of the external network outside the floating IP pool."""
    net, bridge = layout.external_net(), bridge_name()
    _remove_vm_side()
    try:
        _ip("netns", "add", VM_SIDE_NAMESPACE)
        _ip("link", "add", VM_SIDE_BRIDGE_END, "type", "veth", "peer", "name", VM_SIDE_INNER_END,
            "netns", VM_SIDE_NAMESPACE)
        _ip("link", "set", VM_SIDE_BRIDGE_END, "master", bridge, "up")
        _ip("-n", VM_SIDE_NAMESPACE, "addr", "add", f"{net.vm_side_probe}/{net.prefixlen}", "dev", VM_SIDE_INNER_END)
        _ip("-n", VM_SIDE_NAMESPACE, "link", "set", VM_SIDE_INNER_END, "up")
        output = commands.run(["ip", "netns", "exec", VM_SIDE_NAMESPACE, sys.executable, "-c", _CONNECT_EACH,
                               net.gateway, json.dumps(ports), str(CONNECT_TIMEOUT_S)],
                              "connecting to the APIs from the VMs' side of the external bridge",
                              timeout=CONNECT_TIMEOUT_S * len(ports) + 20)
        return json.loads(output)
    finally:
        _remove_vm_side()


def _remove_vm_side() -> None:
    if Path("/run/netns", VM_SIDE_NAMESPACE).exists():
        _ip("netns", "del", VM_SIDE_NAMESPACE)  # its end of the veth goes with it, and so the pair
    if Path("/sys/class/net", VM_SIDE_BRIDGE_END).exists():  # (or going: the kernel deletes the pair late)
        commands.succeeds(["ip", "link", "del", VM_SIDE_BRIDGE_END], timeout=20)


def check_vm_side(say: Progress) -> None:
    """Fail when a VM could not reach an API, the metadata service or the registry."""
    ports = layout.vm_facing_ports()
    failed = unreachable_from_vm_side(ports)
    if failed:
        gateway = layout.external_net().gateway
        raise LocalCloudError(
            f"the VMs cannot reach {gateway} on {', '.join(f'{name} ({why})' for name, why in failed.items())}: "
            "a firewall rule of this machine stops them",
            hint=f"see `iptables -S INPUT` for a DROP or REJECT above the {COMMENT} rule")
    say(f"the VMs' side of {bridge_name()} reaches the {len(ports)} API and registry ports")
