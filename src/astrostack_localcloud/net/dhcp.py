"""dnsmasq per network, as Neutron's DHCP agent runs it: static leases from a hosts
file of every port, per-subnet options (router, DNS servers, classless routes
with the metadata route), the network's MTU (option 26). Renderers are pure;
:class:`Dnsmasq` starts, reloads (SIGHUP) and stops one process.

Neutron hands a deleted port's address out again. dnsmasq refuses a static
address to a new MAC while its lease file holds a lease on it for the old one
("not using configured address ... because it is leased to ..."), so the new VM
gets no answer for the lease's lifetime. Neutron's DHCP agent calls
``dhcp_release`` for such leases; Debian's dnsmasq-base has no ``dhcp_release``,
so :meth:`Dnsmasq.ensure` stops dnsmasq, drops the stale leases from its file
and starts it again (what dnsmasq itself reads at start).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from astrostack_localcloud.net.desired import DhcpServer, DhcpSubnet

WIN2K3_STATIC_ROUTES = "249"     # Windows' classless routes; Neutron sends both
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 3.0


class DhcpError(Exception):
    """dnsmasq of one network did not start, reload or stop; the message names the network."""


def subnet_tag(subnet_id: str) -> str:
    return f"subnet-{subnet_id}"


def render_hosts(server: DhcpServer) -> str:
    """One ``mac,fqdn,ip`` line per address (dnsmasq's dhcp-hostsfile)."""
    return "".join(f"{h.mac},{h.fqdn},{h.ip}\n" for h in server.hosts)


def render_addn_hosts(server: DhcpServer) -> str:
    """The DNS side: every address resolves to its name."""
    return "".join(f"{h.ip}\t{h.fqdn} {h.fqdn.split('.', 1)[0]}\n" for h in server.hosts)


def _subnet_options(subnet: DhcpSubnet) -> list[str]:
    tag = f"tag:{subnet_tag(subnet.id)}"
    lines = []
    if subnet.dns_servers:
        lines.append(f"{tag},option:dns-server,{','.join(subnet.dns_servers)}")
    if subnet.classless_routes:
        routes = ",".join(f"{dest},{hop}" for dest, hop in subnet.classless_routes)
        lines += [f"{tag},option:classless-static-route,{routes}", f"{tag},{WIN2K3_STATIC_ROUTES},{routes}"]
    lines.append(f"{tag},option:router,{subnet.gateway}" if subnet.gateway else f"{tag},option:router")
    return lines


def render_options(server: DhcpServer) -> str:
    return "".join(line + "\n" for subnet in server.subnets for line in _subnet_options(subnet))


@dataclass(frozen=True)
class DhcpFiles:
    directory: Path

    @property
    def hosts(self) -> Path:
        return self.directory / "host"

    @property
    def addn_hosts(self) -> Path:
        return self.directory / "addn_hosts"

    @property
    def options(self) -> Path:
        return self.directory / "opts"

    @property
    def leases(self) -> Path:
        return self.directory / "leases"

    @property
    def pid(self) -> Path:
        return self.directory / "pid"


def dnsmasq_argv(server: DhcpServer, files: DhcpFiles) -> list[str]:
    """Neutron's dnsmasq command line (static ranges, one per DHCP subnet), on the DHCP port only."""
    argv = ["dnsmasq", "--no-hosts", f"--pid-file={files.pid}", f"--dhcp-hostsfile={files.hosts}",
            f"--addn-hosts={files.addn_hosts}", f"--dhcp-optsfile={files.options}",
            f"--dhcp-leasefile={files.leases}", "--dhcp-match=set:ipxe,175", "--local-service",
            "--bind-dynamic", f"--interface={server.veth.inner}", "--except-interface=lo",
            # Files live under the agent's (root-only) state folder, and are re-read on SIGHUP.
            "--user=root", "--group=root"]
    leases = 0
    for subnet in server.subnets:
        argv.append(f"--dhcp-range=set:{subnet_tag(subnet.id)},{subnet.network_address},static,"
                    f"{subnet.netmask},{server.lease_seconds}s")
        leases += _subnet_size(subnet.netmask)
    if server.mtu > 0:
        argv.append(f"--dhcp-option-force=option:mtu,{server.mtu}")
    argv += [f"--dhcp-lease-max={min(max(leases, 1), 16777216)}", "--conf-file=/dev/null"]
    if server.domain:
        argv.append(f"--domain={server.domain}")
    return argv


def _subnet_size(netmask: str) -> int:
    bits = sum(bin(int(octet)).count("1") for octet in netmask.split("."))
    return 2 ** (32 - bits)


def _lease_key(line: str) -> tuple[str, str] | None:
    """(mac, ip) of an IPv4 lease line ``EXPIRY MAC IP NAME CLIENT-ID``; None for other lines."""
    fields = line.split()
    if len(fields) >= 3 and fields[0].isdigit() and fields[1].count(":") == 5 and "." in fields[2]:
        return fields[1].lower(), fields[2]
    return None


def stale_leases(text: str, server: DhcpServer) -> list[str]:
    """Lease lines whose MAC no longer has that address in the hosts file."""
    wanted = {(host.mac.lower(), host.ip) for host in server.hosts}
    return [line for line in text.splitlines() if (key := _lease_key(line)) is not None and key not in wanted]


def without_leases(text: str, stale: list[str]) -> str:
    drop = set(stale)
    return "".join(line + "\n" for line in text.splitlines() if line not in drop)


def _write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    scratch = path.with_suffix(".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)
    return True


class Dnsmasq:
    """The dnsmasq of one network: its files, its process (found again by its pid file)."""

    def __init__(self, server: DhcpServer, directory: Path, timeout: float = START_TIMEOUT_S):
        self.server = server
        self.files = DhcpFiles(directory)
        self.timeout = timeout

    def running_pid(self) -> int | None:
        return running_pid(self.files.pid)

    def _argv_of(self, pid: int) -> list[str]:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            return []

    def ensure(self) -> str:
        """Files written, process running with this command line; returns what it did."""
        self.files.directory.mkdir(parents=True, exist_ok=True)
        changed = [_write_if_changed(self.files.hosts, render_hosts(self.server)),
                   _write_if_changed(self.files.addn_hosts, render_addn_hosts(self.server)),
                   _write_if_changed(self.files.options, render_options(self.server))]
        self.files.leases.touch(exist_ok=True)
        argv = dnsmasq_argv(self.server, self.files)
        pid = self.running_pid()
        if stale_leases(self.files.leases.read_text(), self.server):
            self.stop()   # dnsmasq writes its leases out as it stops; they are read again at start
            released = self._release_stale_leases()
            self._start(argv)
            return f"restarted ({released} stale leases released)"
        if pid and self._argv_of(pid) == argv:
            if any(changed):
                os.kill(pid, signal.SIGHUP)
                return "reloaded"
            return "unchanged"
        if pid:
            self.stop()
        self._start(argv)
        return "started"

    def _release_stale_leases(self) -> int:
        text = self.files.leases.read_text()
        stale = stale_leases(text, self.server)
        _write_if_changed(self.files.leases, without_leases(text, stale))
        return len(stale)

    def _start(self, argv: list[str]) -> None:
        self.files.pid.unlink(missing_ok=True)
        command = ["ip", "netns", "exec", self.server.namespace] + argv
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout,
                                  start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise DhcpError(f"dnsmasq of network {self.server.network_id}: start timed out") from exc
        if done.returncode != 0:
            detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise DhcpError(f"dnsmasq of network {self.server.network_id}: {detail}")
        deadline = time.monotonic() + self.timeout
        while self.running_pid() is None:
            if time.monotonic() > deadline:
                raise DhcpError(f"dnsmasq of network {self.server.network_id}: no pid file after {self.timeout:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        stop_pid_file(self.files.pid)


def running_pid(pid_file: Path) -> int | None:
    """The pid in the file if that process is a live dnsmasq started with this pid file."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"dnsmasq" in cmdline and str(pid_file).encode() in cmdline else None


def stop_pid_file(pid_file: Path, timeout: float = STOP_TIMEOUT_S) -> None:
    pid = running_pid(pid_file)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
