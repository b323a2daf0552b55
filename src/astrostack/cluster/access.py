"""Running a command on a cluster's hosts, over SSH, on every cloud.

The manager is reached at its floating IP with the cluster's key (or the
user's own keypair when the spec names one); workers and the NFS server
through the manager (``ProxyCommand``), at their private addresses. Host keys
go to a known_hosts file of the cluster's own (a recycled floating IP never
meets a stale key in the user's file; ``down`` removes it), and one SSH
connection is shared by consecutive calls (``ControlMaster``), so a monitor
poll costs one round trip. Every call has a timeout; a command that cannot
run raises :class:`ClusterAccessError`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol

from astrostack.errors import AstrostackError, InvalidInput
from astrostack.spec import MANAGER_HOST, WORKER_HOST_PREFIX

if TYPE_CHECKING:
    from astrostack.spec import ClusterSpec

DEFAULT_TIMEOUT_S = 120
CONNECT_TIMEOUT_S = 15
SSH_FAILED = 255
CONTROL_PERSIST_S = 120


class ClusterAccessError(AstrostackError):
    """A host could not be reached or the command could not start."""


@dataclass(frozen=True)
class Result:
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


Sink = Callable[[bytes], None]


class ManagerAccess(Protocol):
    def run(self, script: str, *, timeout: float = DEFAULT_TIMEOUT_S, stdin: str | None = None) -> Result: ...

    def stream(self, script: str, *, timeout: float, sink: Sink) -> int: ...

    def interactive_argv(self, host: str | None = None) -> list[str]: ...


def known_hosts_path(cluster: str) -> Path:
    from astrostack import paths

    return paths.state_dir() / f"{cluster}.known_hosts"


def forget_host_keys(cluster: str) -> None:
    known_hosts_path(cluster).unlink(missing_ok=True)


def _control_dir() -> Path:
    """Short path for ControlMaster sockets (a Unix socket path holds ~100 bytes)."""
    folder = Path(tempfile.gettempdir()) / f"astrostack-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


@dataclass(frozen=True)
class SshAccess:
    """SSH to the manager's floating IP; other hosts through it."""

    cluster: str
    address: str
    user: str
    key_file: Optional[str] = None
    target: Optional[str] = None  # a private address behind the manager; None: the manager

    def options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={known_hosts_path(self.cluster)}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                "-o", "LogLevel=ERROR"]
        if self.key_file:
            opts += ["-i", self.key_file, "-o", "IdentitiesOnly=yes"]
        return opts

    def _multiplexing(self, percent: str = "%") -> list[str]:
        """Options sharing one connection (PERCENT is "%%" inside a ProxyCommand, which
        ssh percent-expands once before the inner ssh sees it)."""
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={_control_dir()}/{percent}C",
                "-o", f"ControlPersist={CONTROL_PERSIST_S}"]

    def tunnel_argv(self, local_port: int, remote: str) -> list[str]:
        """`ssh -N` forwarding 127.0.0.1:LOCAL_PORT to REMOTE (host:port) through the manager,
        a connection of its own (not multiplexed), which ends when the process does."""
        return ["ssh", *self.options(), "-o", "ControlMaster=no", "-o", "ControlPath=none",
                "-o", "ExitOnForwardFailure=yes", "-N", "-L", f"127.0.0.1:{local_port}:{remote}",
                f"{self.user}@{self.address}"]

    def ssh_argv(self) -> list[str]:
        """`ssh ... user@host` for this access (the manager, or a host behind it)."""
        argv = ["ssh", *self.options(), *self._multiplexing()]
        if self.target:
            hop = " ".join(shlex.quote(part) for part in
                           ["ssh", *self.options(), *self._multiplexing(percent="%%"), "-W", "%h:%p",
                            f"{self.user}@{self.address}"])
            argv += ["-o", f"ProxyCommand={hop}", f"{self.user}@{self.target}"]
        else:
            argv.append(f"{self.user}@{self.address}")
        return argv

    def behind(self, private_address: str) -> SshAccess:
        """The same access to another host of the cluster, through the manager."""
        return replace(self, target=private_address)

    def run(self, script: str, *, timeout: float = DEFAULT_TIMEOUT_S, stdin: str | None = None) -> Result:
        argv = self.ssh_argv() + ["sudo bash -c " + shlex.quote(script)]
        where = f"{self.user}@{self.target or self.address}"
        result = _run(argv, timeout, stdin, f"ssh {where} ({self.cluster})")
        if result.exit_code == SSH_FAILED:
            raise ClusterAccessError(f"ssh to {where} of {self.cluster} failed: {result.output.strip()[-200:]}")
        return result

    def stream(self, script: str, *, timeout: float, sink: Sink) -> int:
        """Run SCRIPT, passing its output to SINK as it comes (never held in memory);
        return its exit code."""
        argv = self.ssh_argv() + ["sudo bash -c " + shlex.quote(script)]
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise ClusterAccessError(f"{exc.filename} is not installed") from None
        try:
            assert process.stdout is not None
            for chunk in iter(lambda: process.stdout.read1(65536), b""):
                sink(chunk)
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise ClusterAccessError(f"{self.cluster}: no end within {timeout:.0f} s") from None
        finally:
            if process.poll() is None:
                process.kill()

    def interactive_argv(self, host: str | None = None) -> list[str]:
        return self.ssh_argv()


def _run(argv: Sequence[str], timeout: float, stdin: str | None, what: str) -> Result:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterAccessError(f"{what}: no answer within {timeout:.0f} s") from None
    except FileNotFoundError as exc:
        raise ClusterAccessError(f"{what}: {exc.filename} is not installed") from None
    return Result(done.returncode, done.stdout + done.stderr)


class StackManagerAccess:
    """SSH to a manager whose floating IP Heat will tell once the stack has it.

    Used while a deployment is under way: until the stack's output exists,
    ``run`` raises :class:`ClusterAccessError` (the monitor waits and asks again).
    """

    def __init__(self, cluster: str, user: str, key_file: Optional[str], address_of: Callable[[], Optional[str]]):
        self.cluster = cluster
        self.user = user
        self.key_file = key_file
        self.address_of = address_of
        self.resolved: Optional[SshAccess] = None

    def access(self) -> SshAccess:
        if self.resolved is None:
            address = self.address_of()
            if not address:
                raise ClusterAccessError(f"the manager of {self.cluster} has no floating IP yet")
            self.resolved = SshAccess(self.cluster, address, self.user, self.key_file)
        return self.resolved

    def run(self, script: str, *, timeout: float = DEFAULT_TIMEOUT_S, stdin: str | None = None) -> Result:
        return self.access().run(script, timeout=timeout, stdin=stdin)

    def stream(self, script: str, *, timeout: float, sink: Sink) -> int:
        return self.access().stream(script, timeout=timeout, sink=sink)

    def interactive_argv(self, host: str | None = None) -> list[str]:
        return self.access().interactive_argv(host)


def cluster_access(name: str) -> tuple[ClusterSpec, SshAccess]:
    """The spec of a known cluster and SSH to its manager."""
    from astrostack import state
    from astrostack.spec import spec_from_dict

    record = state.load(name)
    spec = spec_from_dict(record.spec)
    address = record.manager_address or _manager_address_from_stack(name, spec.cloud)
    return spec, SshAccess(name, address, spec.servers.user, record.ssh_private_key_path)


def host_access(name: str, host: str) -> SshAccess:
    """SSH to one host of a cluster: ``manager``, ``worker-N`` or ``nfs`` (or a private address)."""
    spec, manager = cluster_access(name)
    if host == MANAGER_HOST:
        return manager
    if host == "nfs" or host.startswith(WORKER_HOST_PREFIX):
        return manager.behind(_private_address(name, spec, host))
    return manager.behind(host)


def _private_address(name: str, spec: ClusterSpec, host: str) -> str:
    return private_address(name, _stack_outputs(name, spec.cloud), host)


# The stack's outputs that name the hosts' private addresses (heat_templates/cluster.yaml).
NFS_ADDRESS_OUTPUT = "nfs_private_ip"
WORKER_ADDRESSES_OUTPUT = "worker_private_ips"


def worker_addresses(outputs: dict) -> list[str]:
    """worker-0, worker-1, ...'s private addresses, from the stack's outputs ('' while unknown)."""
    return [str(ip or "") for ip in outputs.get(WORKER_ADDRESSES_OUTPUT) or []]


def private_address(name: str, outputs: dict, host: str) -> str:
    """HOST's (``nfs`` or ``worker-N``) private address in cluster NAME's stack OUTPUTS."""
    if host == "nfs":
        address = str(outputs.get(NFS_ADDRESS_OUTPUT) or "")
    else:
        index = host.removeprefix(WORKER_HOST_PREFIX)
        workers = worker_addresses(outputs)
        if not index.isdigit() or int(index) >= len(workers):
            raise InvalidInput(f"cluster {name} has no host {host!r} (workers: worker-0..worker-{len(workers) - 1})")
        address = workers[int(index)]
    if not address:
        raise ClusterAccessError(f"cluster {name}: the stack does not know {host}'s address yet")
    return address


def _stack_outputs(name: str, cloud_name: str) -> dict:
    from astrostack import cloud
    from astrostack.stack import Heat

    heat = Heat(cloud.connect(cloud_name))
    ref = heat.find(name)
    if ref is None:
        raise InvalidInput(f"cluster {name} has no stack")
    return heat.outputs(ref)


def _manager_address_from_stack(name: str, cloud_name: str) -> str:
    address = _stack_outputs(name, cloud_name).get("manager_floating_ip")
    if not address:
        raise ClusterAccessError(f"cluster {name}: its stack has no manager_floating_ip output yet")
    return str(address)
