"""The host side of the external network `public`: bridge, gateway address, NAT.

The Linux bridge ``naming.EXTERNAL_BRIDGE`` (``astro-ex``) in this machine's
root namespace carries the external network; the gateway address
(172.24.4.1/24) lives on it and every API binds there. Routers' ``qg-``
devices join the bridge; this machine forwards and MASQUERADEs their traffic
out of its other interfaces. Docker sets the FORWARD policy to DROP, so the
range gets explicit accepts. Every step checks before it changes anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

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


def nat_rules(cidr: str, bridge: str) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) of every iptables rule the external network needs."""
    tag = ["-m", "comment", "--comment", COMMENT]
    return [
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
    for table, chain, rule in nat_rules(net.cidr, bridge):
        changed |= ensure_rule(table, chain, rule)
    if changed:
        say(f"external network: bridge {bridge} {net.gateway}/{net.prefixlen}, forwarding and NAT of {net.cidr}")
