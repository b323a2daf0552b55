"""VIFs: a veth per Neutron port, its host end in the network's bridge, its guest end the VM's ethN.

The host end is ``tap<port[:11]>`` in ``brq<net[:11]>`` (as Neutron's linuxbridge
agent names them, so the network agent finds and filters it); the guest end
gets the port's MAC and the network's MTU and no address (the guest asks DHCP,
as on a cloud). The guest end waits in this namespace (``vm<port[:11]>``)
until the server runs, because a container's network namespace exists only
then; the boot shim waits for it. Like a NIC before the guest's driver
brings it up, it is moved in down.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .commands import run
from .errors import CommandFailed, PortNotWired
from .state import Nic

DEFAULT_MTU = 1500


def guest_nic_name(index: int) -> str:
    return f"eth{index}"


def host_side_mac(mac: str) -> str:
    """The tap's MAC: the guest's with the first octet fe (libvirt's habit), so the bridge never takes it."""
    return "fe" + mac[2:]


class Vifs:
    """Plugs and unplugs VIFs with ``ip`` (every call bounded by TIMEOUT_S)."""

    def __init__(self, timeout_s: float = 30.0):
        self.timeout_s = timeout_s

    def ip(self, *args: str, what: str, check: bool = True):
        return run(["ip", *args], what=what, timeout_s=self.timeout_s, check=check)

    def link_exists(self, name: str) -> bool:
        return os.path.exists(f"/sys/class/net/{name}")

    def ensure_bridge(self, bridge: str, mtu: int) -> None:
        """The network's bridge, created with its MTU if missing (the network agent may create it first)."""
        if not self.link_exists(bridge):
            done = self.ip("link", "add", bridge, "mtu", str(mtu), "type", "bridge", "stp_state", "0",
                           "forward_delay", "0", what=f"create bridge {bridge}", check=False)
            if done.returncode != 0 and "File exists" not in done.stderr:
                raise CommandFailed(f"create bridge {bridge}: {' '.join(done.stderr.split())}")
        self.ip("link", "set", bridge, "up", what=f"bring up bridge {bridge}")

    def stage(self, nic: Nic) -> None:
        """Create the veth of NIC: the tap up in its bridge, the guest end waiting here."""
        self.ensure_bridge(nic.bridge, nic.mtu)
        self.unplug(nic)
        self.ip("link", "add", nic.tap, "mtu", str(nic.mtu), "address", host_side_mac(nic.mac), "type", "veth",
                "peer", "name", nic.staged, "mtu", str(nic.mtu), "address", nic.mac,
                what=f"create the veth of port {nic.port_id}")
        self.ip("link", "set", nic.tap, "master", nic.bridge, "up",
                what=f"plug {nic.tap} into bridge {nic.bridge}")

    def move_into_guest(self, nic: Nic, index: int, guest_pid: int) -> None:
        """Hand the staged guest end to the VM whose PID 1 is GUEST_PID, as eth<INDEX>."""
        self.ip("link", "set", nic.staged, "netns", str(guest_pid), "name", guest_nic_name(index),
                what=f"move port {nic.port_id} into the VM (pid {guest_pid}) as {guest_nic_name(index)}")

    def plug(self, nics: Sequence[Nic], guest_pid: int) -> None:
        """Stage and move every NIC (a restarted VM: the old veths died with its old namespace)."""
        for index, nic in enumerate(nics):
            self.stage(nic)
            self.move_into_guest(nic, index, guest_pid)

    def plugged(self, nics: Sequence[Nic]) -> bool:
        """Whether every NIC's tap exists (its guest end lives as long as it does)."""
        return all(self.link_exists(nic.tap) for nic in nics)

    def unplug(self, nic: Nic) -> None:
        """Delete the veth of NIC (either end takes the other with it); nothing to do if it is gone."""
        for device in (nic.tap, nic.staged):
            if self.link_exists(device):
                self.ip("link", "del", device, what=f"delete {device} of port {nic.port_id}", check=False)


def wait_ports_wired(port_ids: Sequence[str], ports_dir: Path, timeout_s: float, poll_s: float = 0.2, *,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> None:
    """Wait until the network agent has written ``ports_dir/<port_id>`` for every port.

    A timeout of 0 does not wait (no network agent yet). PortNotWired names the
    ports still missing at the deadline, as libvirt's vif_plugging_is_fatal does.
    """
    if timeout_s <= 0:
        return
    deadline = clock() + timeout_s
    while True:
        missing = [port for port in port_ids if not (ports_dir / port).exists()]
        if not missing:
            return
        if clock() >= deadline:
            raise PortNotWired(f"the network agent did not wire port(s) {', '.join(missing)} within "
                               f"{timeout_s:g} s (no {ports_dir}/<port id>)")
        sleep(poll_s)
