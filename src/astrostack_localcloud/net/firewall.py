"""Security groups as iptables chains and ipsets, the way Neutron's iptables firewall
driver (linuxbridge flavour) writes them, rendered as ``iptables-restore`` /
``ip6tables-restore`` and ``ipset restore`` input (pure).

Bridged traffic reaches the host's FORWARD chain through br_netfilter; the
one jump ``FORWARD -j astro-FORWARD`` at the top hands every packet of the
local cloud's bridges to these chains, which give it a final verdict, and
everything else (Docker's own bridges) returns untouched. Chains are only
ever replaced whole in one ``--noflush`` restore transaction per family.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from astrostack_localcloud.net.desired import DesiredState, FilteredPort, FilterRule

PREFIX = "astro-"
FORWARD_CHAIN = PREFIX + "FORWARD"
SG_CHAIN = PREFIX + "sg-chain"
FALLBACK_CHAIN = PREFIX + "sg-fallback"
RAW_CHAIN = PREFIX + "PREROUTING"
NAT_CHAIN = PREFIX + "POSTROUTING"
IPSET_PREFIXES = ("astro-sg-", "astro-s6-", "tastro-")    # v4, v6, a scratch set left by a failed restore

# Jumps from the built-in chains into ours: (table, built-in chain, our chain), per IP version.
JUMPS = {4: (("filter", "FORWARD", FORWARD_CHAIN), ("raw", "PREROUTING", RAW_CHAIN),
             ("nat", "POSTROUTING", NAT_CHAIN)),
         6: (("filter", "FORWARD", FORWARD_CHAIN), ("raw", "PREROUTING", RAW_CHAIN))}
TABLES = {4: ("raw", "nat", "filter"), 6: ("raw", "filter")}

PROTOCOL_NAMES = {"1": "icmp", "6": "tcp", "17": "udp", "33": "dccp", "58": "ipv6-icmp", "132": "sctp",
                  "136": "udplite", "icmpv6": "ipv6-icmp"}
PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "udplite", "dccp"})
DHCP = {4: ("-p udp -m udp --sport 68 --dport 67", "-p udp -m udp --sport 67 --dport 68"),
        6: ("-p udp -m udp --sport 546 --dport 547", "-p udp -m udp --sport 547 --dport 546")}
# Neutron's ICMPv6: what may come from the unspecified address (MLD reports, neighbour solicitation
# for duplicate address detection), what may enter a VM (MLD query, neighbour solicitation/advert),
# and the router advertisement a VM may never send.
ICMPV6_FROM_UNSPECIFIED = (131, 135, 143)
ICMPV6_INGRESS = (130, 135, 136)
ICMPV6_ROUTER_ADVERT = 134


def port_chain(kind: str, port_id: str) -> str:
    """i (to the VM), o (from the VM), s (anti-spoofing): Neutron's i/o/s + port id[:10]."""
    return f"{PREFIX}{kind}{port_id[:10]}"


def is_ours(chain: str) -> bool:
    return chain.startswith(PREFIX)


def _family(address: str) -> int:
    return ipaddress.ip_network(address, strict=False).version


def _cidr(address: str) -> str:
    if "/" in address:
        return address
    return address + ("/128" if _family(address) == 6 else "/32")


def link_local(mac: str) -> str:
    """The IPv6 link-local address a NIC of this MAC gives itself (EUI-64)."""
    octets = [int(part, 16) for part in mac.split(":")]
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    return str(ipaddress.IPv6Address(bytes([0xFE, 0x80] + [0] * 6 + eui)))


# --- one security-group rule -------------------------------------------------------------


def protocol_name(protocol: str | None, version: int = 4) -> str | None:
    if protocol in (None, "", "0", "any"):
        return None
    name = PROTOCOL_NAMES.get(protocol, protocol)
    return "ipv6-icmp" if version == 6 and name == "icmp" else name


def _protocol_args(rule: FilterRule) -> list[str]:
    protocol = protocol_name(rule.protocol, rule.version)
    if protocol is None:
        return []
    args = ["-p", protocol]
    if rule.port_min is None:
        return args
    if protocol in ("icmp", "ipv6-icmp"):
        match, option = ("icmp", "--icmp-type") if protocol == "icmp" else ("icmp6", "--icmpv6-type")
        code = f"/{rule.port_max}" if rule.port_max is not None else ""
        return args + ["-m", match, option, f"{rule.port_min}{code}"]
    if protocol not in PORT_PROTOCOLS:
        return args
    high = rule.port_max if rule.port_max is not None else rule.port_min
    if rule.port_min == high:
        return args + ["-m", protocol, "--dport", str(rule.port_min)]
    return args + ["-m", protocol, "-m", "multiport", "--dports", f"{rule.port_min}:{high}"]


def _remote_args(rule: FilterRule) -> list[str]:
    if rule.remote_ipset:
        return ["-m", "set", "--match-set", rule.remote_ipset, "src" if rule.direction == "ingress" else "dst"]
    prefix = rule.remote_prefix
    if not prefix or prefix.endswith("/0"):
        return []
    return ["-s" if rule.direction == "ingress" else "-d", _cidr(prefix)]


def rule_args(rule: FilterRule) -> str:
    return " ".join(_remote_args(rule) + _protocol_args(rule) + ["-j", "RETURN"])


def _of_version(rules: Iterable[FilterRule], version: int) -> list[FilterRule]:
    return [r for r in rules if r.version == version]


# --- one port ----------------------------------------------------------------------------


def _group_rules(rules: Iterable[FilterRule]) -> list[str]:
    """Established first, then the group's rules, INVALID dropped, the rest to the fallback."""
    lines = ["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    for rule in rules:
        line = rule_args(rule)
        if line not in lines:
            lines.append(line)
    return lines + ["-m conntrack --ctstate INVALID -j DROP", f"-j {FALLBACK_CHAIN}"]


def ingress_rules(port: FilteredPort, version: int = 4) -> list[str]:
    if version == 4:
        allowed = [f"-s {ip}/32 {DHCP[4][1]} -j RETURN" for ip in port.dhcp_servers]
    else:
        allowed = [f"-p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j RETURN" for kind in ICMPV6_INGRESS]
    lines = _group_rules(_of_version(port.ingress, version))
    return lines[:1] + allowed + lines[1:]


def egress_rules(port: FilteredPort, version: int = 4) -> list[str]:
    client, server = DHCP[version]
    spoof = f"-j {port_chain('s', port.port_id)}"
    if version == 4:
        fixed = [f"-s 0.0.0.0/32 -d 255.255.255.255/32 {client} -j RETURN", spoof, f"{client} -j RETURN"]
    else:
        fixed = [f"-s ::/128 -d ff02::/16 -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j RETURN"
                 for kind in ICMPV6_FROM_UNSPECIFIED]
        fixed += [spoof, f"-p ipv6-icmp -m icmp6 --icmpv6-type {ICMPV6_ROUTER_ADVERT} -j DROP",
                  "-p ipv6-icmp -j RETURN", f"{client} -j RETURN"]
    return fixed + [f"{server} -j DROP"] + _group_rules(_of_version(port.egress, version))


def spoof_rules(port: FilteredPort, version: int = 4) -> list[str]:
    """Only the port's own MAC with its own addresses (and allowed address pairs) leave it."""
    own = port.ips if version == 4 else port.ips6 + (link_local(port.mac),)
    pairs = [(mac, ip) for mac, ip in port.address_pairs if _family(ip) == version]
    if version == 6:
        pairs += [(mac, link_local(mac)) for mac, _ in pairs if mac != port.mac]
    lines = []
    for mac, ip in pairs + [(port.mac, ip) for ip in own]:
        line = f"-s {_cidr(ip)} -m mac --mac-source {mac.upper()} -j RETURN"
        if line not in lines:
            lines.append(line)
    if not own:
        lines.append(f"-m mac --mac-source {port.mac.upper()} -j RETURN")
    return lines + ["-j DROP"]


def _physdev(direction: str, tap: str) -> str:
    return f"-m physdev --physdev-{direction} {tap} --physdev-is-bridged"


# --- the tables --------------------------------------------------------------------------


def filter_chains(state: DesiredState, version: int = 4) -> dict[str, list[str]]:
    """Every chain of ours in the filter table, name -> rule arguments, in order."""
    ports = sorted(state.filtered_ports, key=lambda p: p.port_id)
    forward = [f"{_physdev(d, p.tap)} -j {SG_CHAIN}" for p in ports for d in ("out", "in")]
    # Routers, DHCP and ports without port security on our bridges are not filtered (as in Neutron);
    # they must be accepted here, since the host's FORWARD policy may be DROP (Docker sets it).
    bridges = sorted(state.bridges) + [state.external_bridge]
    forward += [f"-i {b} -o {b} -m physdev --physdev-is-bridged -j ACCEPT" for b in bridges]
    sg_chain = [f"{_physdev('out', p.tap)} -j {port_chain('i', p.port_id)}" for p in ports]
    sg_chain += [f"{_physdev('in', p.tap)} -j {port_chain('o', p.port_id)}" for p in ports]
    chains = {FORWARD_CHAIN: forward, SG_CHAIN: sg_chain + ["-j ACCEPT"], FALLBACK_CHAIN: ["-j DROP"]}
    for port in ports:
        chains[port_chain("i", port.port_id)] = ingress_rules(port, version)
        chains[port_chain("o", port.port_id)] = egress_rules(port, version)
        chains[port_chain("s", port.port_id)] = spoof_rules(port, version)
    return chains


def raw_chains(state: DesiredState) -> dict[str, list[str]]:
    """One conntrack zone per network: overlapping CIDRs of two networks never share an entry."""
    return {RAW_CHAIN: [f"-i {bridge} -j CT --zone {zone}" for bridge, zone in sorted(state.zones.items())]}


def nat_chains(state: DesiredState) -> dict[str, list[str]]:
    """Bridged traffic of the tenant networks is never NATed by the host.

    With br_netfilter, packets crossing a bridge go through the host's nat
    POSTROUTING, where a rule such as ``-s 172.24.4.0/24 ! -o astro-ex -j
    MASQUERADE`` would rewrite a connection to a floating IP on its way from
    the router to the VM. Accepting them first in nat leaves their addresses
    alone, whatever else the host's nat table holds.
    """
    return {NAT_CHAIN: [f"-o {bridge} -j ACCEPT" for bridge in sorted(state.bridges)]}


def _table(name: str, chains: dict[str, list[str]], stale: Iterable[str]) -> list[str]:
    stale = sorted(set(stale) - set(chains))
    lines = [f"*{name}"]
    lines += [f":{chain} - [0:0]" for chain in list(chains) + stale]
    lines += [f"-A {chain} {rule}" for chain, rules in chains.items() for rule in rules]
    lines += [f"-X {chain}" for chain in stale]
    return lines + ["COMMIT"]


def render_restore(state: DesiredState, existing: dict[str, set[str]] | None = None, version: int = 4) -> str:
    """``iptables-restore --noflush`` (or ip6tables-) input that replaces our chains and deletes
    our stale ones. ``existing`` is table -> our chains present now (from :func:`chains_in_save`)."""
    existing = existing or {}
    builders = {"raw": lambda: raw_chains(state), "nat": lambda: nat_chains(state),
                "filter": lambda: filter_chains(state, version)}
    lines: list[str] = []
    for table in TABLES[version]:
        lines += _table(table, builders[table](), existing.get(table, ()))
    return "\n".join(lines) + "\n"


def render_removal(existing: dict[str, set[str]]) -> str:
    """Restore input that deletes every chain of ours (after the jumps are gone)."""
    lines: list[str] = []
    for table, chains in sorted(existing.items()):
        if chains:
            lines += _table(table, {}, chains)
    return "\n".join(lines) + "\n" if lines else ""


def chains_in_save(save_text: str) -> dict[str, set[str]]:
    """Our chains per table in ``iptables-save`` output."""
    found: dict[str, set[str]] = {}
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            found.setdefault(table, set())
        elif line.startswith(":") and is_ours(line[1:].split()[0]):
            found[table].add(line[1:].split()[0])
    return found


# --- ebtables: ARP and MAC anti-spoofing (Neutron's linuxbridge prevent_arp_spoofing) ----------

EB_TABLE = "nat"
EB_CHAIN = PREFIX + "PREROUTING"           # in ebtables' nat table, jumped to from PREROUTING


def arp_chain(port_id: str) -> str:
    return port_chain("a", port_id)


def mac_rules(port: FilteredPort) -> list[str]:
    """A port may send ARP only for its own IPv4 addresses (or its pairs'), and frames only from its MACs."""
    pairs = [(mac, ip) for mac, ip in port.address_pairs if _family(ip) == 4] + [(port.mac, ip) for ip in port.ips]
    lines = [f"-p ARP -s {mac} --arp-ip-src {ip} -j RETURN" for mac, ip in pairs]
    # ARP probes (duplicate address detection) carry no sender address and poison no cache.
    lines += [f"-p ARP -s {port.mac} --arp-ip-src 0.0.0.0 -j RETURN", "-p ARP -j DROP"]
    macs = list(dict.fromkeys([port.mac] + [mac for mac, _ in port.address_pairs]))
    return lines + [f"-s {mac} -j RETURN" for mac in macs]


def ebtables_chains(state: DesiredState) -> dict[str, tuple[str, list[str]]]:
    """Chain -> (policy, rules): unknown frames of a filtered port fall to its chain's DROP."""
    ports = sorted(state.filtered_ports, key=lambda p: p.port_id)
    chains = {EB_CHAIN: ("RETURN", [f"-i {p.tap} -j {arp_chain(p.port_id)}" for p in ports])}
    chains.update({arp_chain(p.port_id): ("DROP", mac_rules(p)) for p in ports})
    return chains


def render_ebtables(state: DesiredState, existing: Iterable[str] = ()) -> str:
    """``ebtables-restore --noflush`` input: our chains replaced, our stale ones deleted."""
    chains = ebtables_chains(state)
    stale = sorted(set(existing) - set(chains))
    lines = [f"*{EB_TABLE}"] + [f":{name} {policy}" for name, (policy, _) in chains.items()]
    lines += [f":{name} RETURN" for name in stale]
    lines += [f"-A {name} {rule}" for name, (_, rules) in chains.items() for rule in rules]
    lines += [f"-X {name}" for name in stale]
    return "\n".join(lines + ["COMMIT"]) + "\n"


def render_ebtables_removal(existing: Iterable[str]) -> str:
    existing = sorted(existing)
    if not existing:
        return ""
    lines = [f"*{EB_TABLE}"] + [f":{name} RETURN" for name in existing] + [f"-X {name}" for name in existing]
    return "\n".join(lines + ["COMMIT"]) + "\n"


def ebtables_jump_present(save_text: str) -> bool:
    return f"-A PREROUTING -j {EB_CHAIN}" in save_text.splitlines()


# --- ipsets ------------------------------------------------------------------------------


def temporary_set(name: str) -> str:
    return "t" + name


def render_ipsets(sets: dict[str, frozenset[str]], family: str = "inet") -> str:
    """ipset restore input that fills each set through a swap (members never half-updated)."""
    lines = []
    for name, members in sorted(sets.items()):
        scratch = temporary_set(name)
        lines += [f"create {name} hash:net family {family} -exist",
                  f"create {scratch} hash:net family {family} -exist", f"flush {scratch}"]
        lines += [f"add {scratch} {member}" for member in sorted(members)]
        lines += [f"swap {scratch} {name}", f"destroy {scratch}"]
    return "\n".join(lines) + "\n" if lines else ""
