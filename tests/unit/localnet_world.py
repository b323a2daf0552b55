"""Test support for the network agent's unit tests: Neutron JSON as the API answers it,
and a small netfilter that runs the agent's own iptables-restore text on a packet.

The simulator understands exactly the matches the agent writes and refuses any
other (so a rule it cannot judge fails the test rather than passing silently).
"""

from __future__ import annotations

import ipaddress
import shlex
import uuid
from dataclasses import dataclass, field

PROJECT = "p" + "0" * 31
PROTOCOL_NUMBERS = {"icmp": "1", "tcp": "6", "udp": "17", "esp": "50", "ipv6-icmp": "58", "sctp": "132"}


def new_id() -> str:
    return str(uuid.uuid4())


class World:
    """A Neutron: networks, subnets, ports, routers, floating IPs, security groups (JSON)."""

    def __init__(self):
        self.payload: dict[str, list[dict]] = {k: [] for k in
                                               ("networks", "subnets", "ports", "routers", "floatingips",
                                                "security_groups")}
        self._macs = 0

    def _mac(self) -> str:
        self._macs += 1
        return "fa:16:3e:00:%02x:%02x" % divmod(self._macs, 256)

    def network(self, cidr: str, gateway: str | None, external: bool = False, mtu: int | None = None,
                dhcp: bool = True, dns: tuple[str, ...] = (), host_routes: tuple[dict, ...] = ()) -> tuple[str, str]:
        network_id, subnet_id = new_id(), new_id()
        self.payload["networks"].append({
            "id": network_id, "name": f"net-{cidr}", "mtu": mtu or (1500 if external else 1450),
            "router:external": external, "tenant_id": PROJECT,
            "provider:network_type": "flat" if external else "vxlan"})
        self.payload["subnets"].append({
            "id": subnet_id, "network_id": network_id, "cidr": cidr, "ip_version": 4, "gateway_ip": gateway,
            "enable_dhcp": dhcp and not external, "dns_nameservers": list(dns), "host_routes": list(host_routes)})
        return network_id, subnet_id

    def port(self, network_id: str, subnet_id: str, ip: str, owner: str = "compute:nova",
             device_id: str | None = None, groups: tuple[str, ...] = (), security: bool | None = None,
             pairs: tuple[dict, ...] = (), dns_name: str = "") -> dict:
        body = {"id": new_id(), "network_id": network_id, "mac_address": self._mac(),
                "fixed_ips": [{"subnet_id": subnet_id, "ip_address": ip}], "device_owner": owner,
                "device_id": device_id if device_id is not None else new_id(), "project_id": PROJECT,
                "security_groups": list(groups), "allowed_address_pairs": list(pairs), "dns_name": dns_name,
                "port_security_enabled": (not owner.startswith("network:")) if security is None else security,
                "revision_number": 3}
        self.payload["ports"].append(body)
        return body

    def group(self, name: str, default_egress: bool = True) -> str:
        group_id = new_id()
        self.payload["security_groups"].append({"id": group_id, "name": name, "security_group_rules": []})
        if default_egress:   # Neutron adds these to every new group
            self.rule(group_id, "egress", ethertype="IPv4")
            self.rule(group_id, "egress", ethertype="IPv6")
        return group_id

    def rule(self, group_id: str, direction: str, protocol=None, low=None, high=None, prefix=None,
             remote_group=None, ethertype="IPv4") -> None:
        group = next(g for g in self.payload["security_groups"] if g["id"] == group_id)
        group["security_group_rules"].append({
            "id": new_id(), "security_group_id": group_id, "direction": direction, "ethertype": ethertype,
            "protocol": protocol, "port_range_min": low, "port_range_max": high, "remote_ip_prefix": prefix,
            "remote_group_id": remote_group})

    def router(self, external: tuple[str, str], external_ip: str, interfaces: list[tuple[str, str, str]],
               snat: bool = True) -> str:
        """external = (network, subnet); interfaces = [(network, subnet, gateway ip)]."""
        router_id = new_id()
        self.payload["routers"].append({
            "id": router_id, "name": "router", "tenant_id": PROJECT, "admin_state_up": True,
            "external_gateway_info": {"network_id": external[0], "enable_snat": snat, "external_fixed_ips": [
                {"subnet_id": external[1], "ip_address": external_ip}]}})
        self.port(external[0], external[1], external_ip, owner="network:router_gateway", device_id=router_id)
        for network_id, subnet_id, ip in interfaces:
            self.port(network_id, subnet_id, ip, owner="network:router_interface", device_id=router_id)
        return router_id

    def floating_ip(self, address: str, port: dict, router_id: str) -> None:
        self.payload["floatingips"].append({
            "id": new_id(), "floating_ip_address": address, "floating_network_id": "",
            "fixed_ip_address": port["fixed_ips"][0]["ip_address"], "port_id": port["id"], "router_id": router_id})


# --- a netfilter ---------------------------------------------------------------------------


@dataclass
class Packet:
    src: str
    dst: str
    protocol: str = "tcp"                 # name or number
    dport: int | None = None
    sport: int | None = 40000
    physdev_in: str | None = None
    physdev_out: str | None = None
    in_interface: str = ""
    out_interface: str = ""
    mac: str = ""
    state: str = "NEW"
    icmp_type: int | None = None
    bridged: bool = True
    mark: int = 0


@dataclass
class Rule:
    matches: list[tuple[str, ...]] = field(default_factory=list)
    target: str = ""
    target_args: tuple[str, ...] = ()


def _in_net(address: str, cidr: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False)


def _number(protocol: str) -> str:
    return PROTOCOL_NUMBERS.get(protocol, protocol)


def _ports(spec: str) -> range:
    low, _, high = spec.partition(":")
    return range(int(low), int(high or low) + 1)


class Netfilter:
    """Tables parsed from iptables-restore text; ``verdict`` walks a packet through them."""

    def __init__(self, restore_text: str, ipsets: dict[str, set[str]] | None = None,
                 policies: dict[str, str] | None = None):
        self.tables: dict[str, dict[str, list[Rule]]] = {}
        self.ipsets = ipsets or {}
        self.policies = policies or {"FORWARD": "DROP"}
        self.deleted: dict[str, set[str]] = {}
        self._parse(restore_text)

    def _parse(self, text: str) -> None:
        table = None
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = self.tables.setdefault(line[1:], {})
            elif line.startswith(":"):
                table.setdefault(line[1:].split()[0], [])
            elif line.startswith("-A "):
                tokens = shlex.split(line)
                table[tokens[1]].append(self._rule(tokens[2:]))
            elif line.startswith("-X "):
                self.deleted.setdefault(next(k for k, v in self.tables.items() if v is table), set()).add(line[3:])
            elif line != "COMMIT":
                raise AssertionError(f"unexpected restore line: {line}")

    @staticmethod
    def _rule(tokens: list[str]) -> Rule:
        rule = Rule()
        i = 0
        while i < len(tokens):
            token = tokens[i]
            negate = token == "!"
            if negate:
                i += 1
                token = tokens[i]
            if token == "-j":
                rule.target, rule.target_args = tokens[i + 1], tuple(tokens[i + 2:])
                return rule
            if token == "-m":
                i += 2
                continue
            if token == "--physdev-is-bridged":
                rule.matches.append(("bridged", str(negate)))
                i += 1
                continue
            arity = 2 if token in ("--match-set",) else 1
            rule.matches.append((token, str(negate), *tokens[i + 1:i + 1 + arity]))
            i += 1 + arity
        raise AssertionError(f"rule without target: {tokens}")

    # --- matching --------------------------------------------------------------------------

    def _match(self, match: tuple[str, ...], packet: Packet) -> bool:
        name, negate, *args = match
        result = self._test(name, args, packet)
        return (not result) if negate == "True" else result

    def _test(self, name: str, args: list[str], p: Packet) -> bool:
        value = args[0] if args else ""
        tests = {
            "-i": lambda: p.in_interface == value or (value.endswith("+") and p.in_interface.startswith(value[:-1])),
            "-o": lambda: p.out_interface == value or (value.endswith("+") and p.out_interface.startswith(value[:-1])),
            "-s": lambda: _in_net(p.src, value),
            "-d": lambda: _in_net(p.dst, value),
            "-p": lambda: _number(p.protocol) == _number(value),
            "--dport": lambda: p.dport is not None and p.dport in _ports(value),
            "--sport": lambda: p.sport is not None and p.sport in _ports(value),
            "--dports": lambda: p.dport is not None and any(p.dport in _ports(v) for v in value.split(",")),
            "--icmp-type": lambda: p.icmp_type is not None and int(value.split("/")[0]) == p.icmp_type,
            "--icmpv6-type": lambda: p.icmp_type is not None and int(value.split("/")[0]) == p.icmp_type,
            "--physdev-in": lambda: p.physdev_in == value,
            "--physdev-out": lambda: p.physdev_out == value,
            "bridged": lambda: p.bridged,
            "--ctstate": lambda: p.state in value.split(","),
            "--mac-source": lambda: p.mac.lower() == value.lower(),
            "--match-set": lambda: self._in_set(args, p),
            "--comment": lambda: True,
            "--mark": lambda: self._marked(value, p),
        }
        if name not in tests:
            raise AssertionError(f"the simulator does not know the match {name}")
        return tests[name]()

    @staticmethod
    def _marked(spec: str, p: Packet) -> bool:
        value, _, mask = spec.partition("/")
        return p.mark & int(mask or "0xffffffff", 16) == int(value, 16)

    def _in_set(self, args: list[str], p: Packet) -> bool:
        name, direction = args
        address = p.src if direction == "src" else p.dst
        return any(_in_net(address, member if "/" in member else member + "/32") for member in self.ipsets[name])

    # --- walking ----------------------------------------------------------------------------

    def run(self, table: str, chain: str, packet: Packet, trace: list[str] | None = None) -> str | None:
        """ACCEPT / DROP / None (fell off the end or RETURNed)."""
        for rule in self.tables[table][chain]:
            if not all(self._match(m, packet) for m in rule.matches):
                continue
            if trace is not None:
                trace.append(f"{chain}: {rule.target} {' '.join(rule.target_args)}")
            if rule.target in ("ACCEPT", "DROP"):
                return rule.target
            if rule.target == "RETURN":
                return None
            if rule.target in self.tables[table]:
                verdict = self.run(table, rule.target, packet, trace)
                if verdict:
                    return verdict
                continue
            raise AssertionError(f"unknown target {rule.target} in {chain}")
        return None

    def forward(self, packet: Packet, jump: str = "astro-FORWARD") -> str:
        """The host's FORWARD chain: our jump first, then (as Docker leaves it) policy DROP."""
        return self.run("filter", jump, packet) or self.policies["FORWARD"]

    def zone(self, packet: Packet) -> int | None:
        for rule in self.tables["raw"]["astro-PREROUTING"]:
            if all(self._match(m, packet) for m in rule.matches) and rule.target == "CT":
                return int(rule.target_args[rule.target_args.index("--zone") + 1])
        return None

    def nat(self, chain: str, packet: Packet) -> tuple[str, str] | None:
        """The NAT target a packet meets first in a nat chain, (target, address); None if none
        (an ACCEPT ends the walk untranslated)."""
        found = self._nat(chain, packet)
        return None if found in (None, ("ACCEPT", "")) else found

    def _nat(self, chain: str, packet: Packet) -> tuple[str, str] | None:
        for rule in self.tables["nat"][chain]:
            if not all(self._match(m, packet) for m in rule.matches):
                continue
            if rule.target == "ACCEPT":
                return "ACCEPT", ""
            if rule.target == "RETURN":
                return None
            if rule.target in self.tables["nat"]:
                found = self._nat(rule.target, packet)
                if found:
                    return found
                continue
            return rule.target, rule.target_args[-1] if rule.target_args else ""
        return None


def parse_ipset_restore(text: str) -> dict[str, set[str]]:
    """The sets an ``ipset restore`` input leaves behind (create/flush/add/swap/destroy)."""
    sets: dict[str, set[str]] = {}
    for line in text.splitlines():
        verb, name, *rest = line.split()
        if verb == "create":
            sets.setdefault(name, set())
        elif verb == "flush":
            sets[name] = set()
        elif verb == "add":
            sets[name].add(rest[0])
        elif verb == "swap":
            sets[name], sets[rest[0]] = sets[rest[0]], sets[name]
        elif verb == "destroy":
            del sets[name]
        else:
            raise AssertionError(f"unexpected ipset line: {line}")
    return sets


@dataclass
class Frame:
    in_port: str
    src_mac: str
    arp_ip_src: str | None = None        # an ARP frame's sender address; None: not ARP


class Ebtables:
    """The agent's ebtables-restore text (nat table) walked by a frame entering the bridge."""

    def __init__(self, restore_text: str):
        self.chains: dict[str, tuple[str, list[list[str]]]] = {}
        for line in restore_text.splitlines():
            if line.startswith(":"):
                name, policy = line[1:].split()
                self.chains[name] = (policy, [])
            elif line.startswith("-A "):
                tokens = shlex.split(line)
                self.chains[tokens[1]][1].append(tokens[2:])
            elif line not in ("*nat", "COMMIT") and not line.startswith("-X "):
                raise AssertionError(f"unexpected ebtables line: {line}")

    @staticmethod
    def _matches(tokens: list[str], frame: Frame) -> bool:
        options = dict(zip(tokens[:-2:2], tokens[1:-2:2]))
        for option, value in options.items():
            if option == "-i" and frame.in_port != value:
                return False
            if option == "-p" and (value != "ARP" or frame.arp_ip_src is None):
                return False
            if option == "-s" and frame.src_mac.lower() != value.lower():
                return False
            if option == "--arp-ip-src" and (frame.arp_ip_src is None or not _in_net(frame.arp_ip_src, value)):
                return False
            if option not in ("-i", "-p", "-s", "--arp-ip-src"):
                raise AssertionError(f"the simulator does not know {option}")
        return True

    def _run(self, chain: str, frame: Frame) -> str | None:
        policy, rules = self.chains[chain]
        for tokens in rules:
            if not self._matches(tokens, frame):
                continue
            target = tokens[-1]
            if target in ("ACCEPT", "DROP"):
                return target
            if target == "RETURN":
                return None
            verdict = self._run(target, frame)
            if verdict:
                return verdict
        return None if policy == "RETURN" else policy

    def verdict(self, frame: Frame, chain: str = "astro-PREROUTING") -> str:
        return self._run(chain, frame) or "ACCEPT"
