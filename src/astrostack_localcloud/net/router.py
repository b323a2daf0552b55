"""A router namespace's iptables as the L3 agent writes them (pure): metadata
redirect, floating-IP DNAT/SNAT, SNAT of the internal networks to the gateway.

The namespace belongs to the agent alone, so its tables are restored whole
(no ``--noflush``): one atomic replacement per change.
"""

from __future__ import annotations

from astrostack_localcloud import naming
from astrostack_localcloud.net.desired import RouterConfig

# Neutron's marks (neutron_lib.constants): metadata access and packets entering from the gateway.
METADATA_MARK = "0x1"
EXTERNAL_INGRESS_MARK = "0x2"
MARK_MASK = "0xffff"
SNAT_CHAIN = "astro-snat"
FLOAT_SNAT_CHAIN = "astro-float-snat"
INTERNAL_DEVICES = "qr-+"


def _metadata_match() -> str:
    return f"-d {naming.METADATA_ADDRESS}/32 -i {INTERNAL_DEVICES} -p tcp -m tcp --dport 80"


def mangle_rules(config: RouterConfig) -> list[str]:
    rules = [f"-A PREROUTING {_metadata_match()} -j MARK --set-xmark {METADATA_MARK}/{MARK_MASK}"]
    if config.gateway_device:
        rules.append(f"-A PREROUTING -i {config.gateway_device} -j MARK --set-xmark {EXTERNAL_INGRESS_MARK}/{MARK_MASK}")
    return rules


def nat_rules(config: RouterConfig, metadata_port: int = naming.METADATA_PROXY_PORT) -> list[str]:
    rules = [f"-A PREROUTING {_metadata_match()} -j REDIRECT --to-ports {metadata_port}"]
    gateway = config.gateway_device
    if not gateway or not config.gateway_ip:
        return rules
    for mapping in config.floating:
        rules += [f"-A PREROUTING -d {mapping.floating_ip}/32 -j DNAT --to-destination {mapping.fixed_ip}",
                  f"-A OUTPUT -d {mapping.floating_ip}/32 -j DNAT --to-destination {mapping.fixed_ip}"]
    # Traffic between internal networks keeps its addresses; only what leaves by qg- is translated.
    rules += [f"-A POSTROUTING ! -o {gateway} -m conntrack ! --ctstate DNAT -j ACCEPT",
              f"-A POSTROUTING -j {SNAT_CHAIN}",
              f"-A {SNAT_CHAIN} -j {FLOAT_SNAT_CHAIN}"]
    rules += [f"-A {FLOAT_SNAT_CHAIN} -s {m.fixed_ip}/32 -j SNAT --to-source {m.floating_ip}" for m in config.floating]
    if config.snat:
        rules.append(f"-A {SNAT_CHAIN} -o {gateway} -j SNAT --to-source {config.gateway_ip}")
    # A VM reaching a floating IP of its own router: the reply must come back through the router.
    rules.append(f"-A {SNAT_CHAIN} -m mark ! --mark {EXTERNAL_INGRESS_MARK}/{MARK_MASK} "
                 f"-m conntrack --ctstate DNAT -j SNAT --to-source {config.gateway_ip}")
    return rules


def filter_rules(metadata_port: int = naming.METADATA_PROXY_PORT) -> list[str]:
    """Only redirected metadata requests reach the proxy's port."""
    return [f"-A INPUT -m mark --mark {METADATA_MARK}/{MARK_MASK} -j ACCEPT",
            f"-A INPUT -p tcp -m tcp --dport {metadata_port} -j DROP"]


BUILTIN = {
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}


def render_restore(config: RouterConfig, metadata_port: int = naming.METADATA_PROXY_PORT) -> str:
    """The whole iptables-restore input of one router namespace."""
    tables = {
        "mangle": ((), mangle_rules(config)),
        "nat": ((SNAT_CHAIN, FLOAT_SNAT_CHAIN) if config.gateway_device else (), nat_rules(config, metadata_port)),
        "filter": ((), filter_rules(metadata_port)),
    }
    lines = []
    for table, (chains, rules) in tables.items():
        lines.append(f"*{table}")
        lines += [f":{chain} ACCEPT [0:0]" for chain in BUILTIN[table]]
        lines += [f":{chain} - [0:0]" for chain in chains]
        lines += rules
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"
