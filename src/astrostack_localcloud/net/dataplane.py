"""Linux objects of the data plane: bridges, namespaces, veths, addresses, routes,
iptables and ipset transactions, through ``ip`` and friends (every call with a
timeout; a failure is one :class:`DataplaneError` line naming the object).

``host_namespace`` is where the bridges live: None for this process's own
namespace (the machine's), a name for a test that builds a whole "host" in
a namespace of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from astrostack_localcloud.net import netns
from astrostack_localcloud.net.desired import Veth

COMMAND_TIMEOUT_S = 15.0
HOST = object()        # "the host namespace", whatever it is


class DataplaneError(Exception):
    """A data-plane command failed; the message names the object."""


@dataclass(frozen=True)
class Link:
    name: str
    kind: str
    mtu: int
    mac: str
    master: str | None
    up: bool


class Runner:
    """Runs commands in the host namespace or in a named one."""

    def __init__(self, host_namespace: str | None = None, timeout: float = COMMAND_TIMEOUT_S):
        self.host_namespace = host_namespace
        self.timeout = timeout

    def _resolve(self, namespace) -> str | None:
        return self.host_namespace if namespace is HOST else namespace

    def run(self, argv: Sequence[str], what: str, namespace=HOST, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """A command inside the namespace (``ip netns exec``)."""
        target = self._resolve(namespace)
        return self._execute((["ip", "netns", "exec", target] if target else []) + list(argv), what, stdin, check)

    def ip(self, *args: str, what: str, namespace=HOST, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NAMESPACE ...`` (no exec needed)."""
        target = self._resolve(namespace)
        return self._execute(["ip"] + (["-n", target] if target else []) + list(args), what, None, check)

    def _execute(self, argv: list[str], what: str, stdin: str | None, check: bool) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            raise DataplaneError(f"{what}: {argv[0]} timed out after {self.timeout:.0f} s") from exc
        if check and done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise DataplaneError(f"{what}: {detail}")
        return done


# --- looking ----------------------------------------------------------------------------


def namespaces() -> set[str]:
    try:
        return set(os.listdir(netns.NETNS_DIR))
    except FileNotFoundError:
        return set()


def links(runner: Runner, namespace=HOST) -> dict[str, Link]:
    done = runner.ip("-j", "-d", "link", "show", what=f"list links of {runner._resolve(namespace) or 'host'}",
                     namespace=namespace)
    found = {}
    for item in json.loads(done.stdout or "[]"):
        kind = (item.get("linkinfo") or {}).get("info_kind", "")
        found[item["ifname"]] = Link(name=item["ifname"], kind=kind, mtu=int(item.get("mtu", 0)),
                                     mac=(item.get("address") or "").lower(), master=item.get("master"),
                                     up="UP" in (item.get("flags") or ()))
    return found


def addresses(runner: Runner, device: str, namespace) -> set[str]:
    done = runner.ip("-j", "-4", "addr", "show", "dev", device, what=f"addresses of {device}", namespace=namespace)
    found = set()
    for item in json.loads(done.stdout or "[]"):
        for info in item.get("addr_info") or ():
            found.add(f"{info['local']}/{info['prefixlen']}")
    return found


# --- namespaces -------------------------------------------------------------------------


def ensure_namespace(runner: Runner, name: str, forwarding: bool) -> None:
    if name not in namespaces():
        runner.run(["ip", "netns", "add", name], what=f"create namespace {name}", namespace=None)
    runner.ip("link", "set", "lo", "up", what=f"lo of {name}", namespace=name)
    value = "1" if forwarding else "0"
    runner.run(["sysctl", "-q", "-w", f"net.ipv4.ip_forward={value}"], what=f"ip_forward of {name}", namespace=name)


def namespace_pids(runner: Runner, name: str) -> list[int]:
    done = runner.run(["ip", "netns", "pids", name], what=f"processes of {name}", namespace=None, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def delete_namespace(runner: Runner, name: str) -> None:
    """Ends every process in it, then deletes it (its veths, and their peers, go with it)."""
    if name not in namespaces():
        return
    pids = namespace_pids(runner, name)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    _wait_gone(pids, deadline=time.monotonic() + 3)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    runner.run(["ip", "netns", "delete", name], what=f"delete namespace {name}", namespace=None)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: Iterable[int], deadline: float) -> None:
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if os.path.exists(f"/proc/{p}")]
        if pending:
            time.sleep(0.05)


# --- bridges ----------------------------------------------------------------------------


def ensure_bridge(runner: Runner, name: str, mtu: int, present: dict[str, Link]) -> None:
    link = present.get(name)
    if link is None:
        done = runner.ip("link", "add", name, "mtu", str(mtu), "type", "bridge", "stp_state", "0",
                         "forward_delay", "0", what=f"create bridge {name}", check=False)
        # The Nova driver creates bridges too: losing that race is fine.
        if done.returncode != 0 and "File exists" not in done.stderr:
            raise DataplaneError(f"create bridge {name}: {done.stderr.strip()}")
        runner.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{name}.disable_ipv6=1"],
                   what=f"disable IPv6 on {name}", check=False)
    elif link.mtu != mtu:
        runner.ip("link", "set", name, "mtu", str(mtu), what=f"MTU of bridge {name}")
    if link is None or not link.up:
        runner.ip("link", "set", name, "up", what=f"bring up bridge {name}")


def bridge_members(present: dict[str, Link], bridge: str) -> list[str]:
    return sorted(link.name for link in present.values() if link.master == bridge)


def delete_link(runner: Runner, name: str, namespace=HOST) -> None:
    runner.ip("link", "delete", name, what=f"delete {name}", namespace=namespace, check=False)


# --- veths ------------------------------------------------------------------------------


def ensure_veth(runner: Runner, veth: Veth, namespace: str, host_links: dict[str, Link]) -> list[str]:
    """The veth, its MAC, MTU, bridge and addresses; returns the addresses it added."""
    inner_links = links(runner, namespace)
    outer, inner = host_links.get(veth.outer), inner_links.get(veth.inner)
    if outer is None or inner is None:
        _create_veth(runner, veth, namespace, outer is not None, inner is not None)
        inner_links = links(runner, namespace)
        inner = inner_links[veth.inner]
        outer = None
    _configure_inner(runner, veth, namespace, inner)
    _configure_outer(runner, veth, outer)
    return sync_addresses(runner, veth.inner, namespace, veth.addresses)


def _create_veth(runner: Runner, veth: Veth, namespace: str, outer_exists: bool, inner_exists: bool) -> None:
    if outer_exists:
        delete_link(runner, veth.outer)
    if inner_exists:
        delete_link(runner, veth.inner, namespace)
    runner.ip("link", "add", veth.outer, "mtu", str(veth.mtu), "type", "veth", "peer", "name", veth.inner,
              "mtu", str(veth.mtu), "netns", namespace, what=f"create veth {veth.outer}/{veth.inner}")


def _configure_inner(runner: Runner, veth: Veth, namespace: str, link: Link) -> None:
    if link.mac != veth.mac.lower():
        runner.ip("link", "set", veth.inner, "address", veth.mac, what=f"MAC of {veth.inner}", namespace=namespace)
    if link.mtu != veth.mtu:
        runner.ip("link", "set", veth.inner, "mtu", str(veth.mtu), what=f"MTU of {veth.inner}", namespace=namespace)
    if not link.up:
        runner.ip("link", "set", veth.inner, "up", what=f"bring up {veth.inner}", namespace=namespace)


def _configure_outer(runner: Runner, veth: Veth, link: Link | None) -> None:
    if link is None or link.mtu != veth.mtu:
        runner.ip("link", "set", veth.outer, "mtu", str(veth.mtu), what=f"MTU of {veth.outer}")
    if link is None or link.master != veth.bridge:
        runner.ip("link", "set", veth.outer, "master", veth.bridge, what=f"put {veth.outer} in {veth.bridge}")
    if link is None or not link.up:
        runner.ip("link", "set", veth.outer, "up", what=f"bring up {veth.outer}")


def sync_addresses(runner: Runner, device: str, namespace: str, wanted: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(wanted))
    present = addresses(runner, device, namespace)
    for address in sorted(present - set(wanted)):
        runner.ip("addr", "del", address, "dev", device, what=f"remove {address} from {device}", namespace=namespace)
    added = [a for a in wanted if a not in present]
    for address in added:
        runner.ip("addr", "add", address, "dev", device, what=f"add {address} to {device}", namespace=namespace)
    return added


def delete_stale_devices(runner: Runner, namespace: str, prefixes: tuple[str, ...], keep: set[str]) -> list[str]:
    stale = [name for name in links(runner, namespace) if name.startswith(prefixes) and name not in keep]
    for name in stale:
        delete_link(runner, name, namespace)
    return stale


def set_default_route(runner: Runner, namespace: str, gateway: str | None, device: str | None) -> None:
    if gateway and device:
        runner.ip("route", "replace", "default", "via", gateway, "dev", device,
                  what=f"default route of {namespace} via {gateway}", namespace=namespace)
    else:
        runner.ip("route", "del", "default", what=f"default route of {namespace}", namespace=namespace, check=False)


# --- netfilter --------------------------------------------------------------------------


def _iptables(version: int) -> str:
    return "ip6tables" if version == 6 else "iptables"


def iptables_restore(runner: Runner, text: str, what: str, namespace=HOST, noflush: bool = False,
                     version: int = 4) -> None:
    argv = [f"{_iptables(version)}-restore", "-w", "10"] + (["--noflush"] if noflush else [])
    runner.run(argv, what=what, namespace=namespace, stdin=text)


def iptables_save(runner: Runner, tables: Iterable[str], namespace=HOST, version: int = 4) -> str:
    save = f"{_iptables(version)}-save"
    return "".join(runner.run([save, "-t", table], what=f"{save} -t {table}", namespace=namespace).stdout
                   for table in tables)


def ensure_jump(runner: Runner, table: str, builtin: str, chain: str, version: int = 4) -> None:
    """Our chain first in the built-in one (inserted once, found again by -C)."""
    command = [_iptables(version), "-w", "10", "-t", table]
    check = runner.run(command + ["-C", builtin, "-j", chain], what=f"look for {builtin} -> {chain}", check=False)
    if check.returncode != 0:
        runner.run(command + ["-I", builtin, "1", "-j", chain], what=f"jump {table} {builtin} -> {chain}")


def remove_jump(runner: Runner, table: str, builtin: str, chain: str, version: int = 4) -> None:
    for _ in range(8):  # bounded: a jump inserted twice by hand goes too
        done = runner.run([_iptables(version), "-w", "10", "-t", table, "-D", builtin, "-j", chain],
                          what=f"remove {builtin} -> {chain}", check=False)
        if done.returncode != 0:
            return


def ebtables_save(runner: Runner, table: str) -> str:
    return runner.run(["ebtables-save", "-t", table], what=f"ebtables-save -t {table}").stdout


def ebtables_restore(runner: Runner, text: str, what: str) -> None:
    runner.run(["ebtables-restore", "--noflush"], what=what, stdin=text)


def ebtables_jump(runner: Runner, table: str, builtin: str, chain: str, insert: bool) -> None:
    """Insert (first) or delete the jump; ebtables has no -C, the caller looks in ebtables-save."""
    action = ["-I", builtin, "1"] if insert else ["-D", builtin]
    runner.run(["ebtables", "-t", table] + action + ["-j", chain], what=f"ebtables {table} {builtin} -> {chain}",
               check=insert)


def ipset_restore(runner: Runner, text: str) -> None:
    if text:
        runner.run(["ipset", "restore"], what="ipset restore", stdin=text)


def ipset_names(runner: Runner, prefixes: tuple[str, ...]) -> set[str]:
    done = runner.run(["ipset", "list", "-n"], what="ipset list", check=False)
    return {name for name in done.stdout.split() if name.startswith(prefixes)}


def ipset_destroy(runner: Runner, name: str) -> None:
    runner.run(["ipset", "destroy", name], what=f"destroy ipset {name}", check=False)


def conntrack_flush(runner: Runner, zone: int | None, address: str, namespace=HOST) -> None:
    """Forget connections of an address that lost its filter or NAT (as Neutron does)."""
    zone_args = ["-w", str(zone)] if zone else []
    for direction in ("-s", "-d"):
        runner.run(["conntrack", "-D", direction, address] + zone_args, what=f"conntrack flush of {address}",
                   namespace=namespace, check=False)


# --- gratuitous ARP ---------------------------------------------------------------------


def gratuitous_arp(namespace: str, device: str, mac: str, ip: str, count: int = 2) -> None:
    """Tell the external network that ``ip`` moved to ``mac`` (a floating IP associated)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = socket.inet_aton(ip)
    frame = (b"\xff" * 6 + hw + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
             + hw + addr + b"\x00" * 6 + addr)
    with netns.entered(namespace):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((device, 0))
        for _ in range(count):
            sock.send(frame)
    finally:
        sock.close()
