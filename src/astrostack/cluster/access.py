"""Running a command on a cluster's manager host.

On the local cloud the manager is a container-VM: `docker exec` into it. On a
real cloud it is an SSH hop to the manager's floating IP with the cluster's
key (the user's own keypair when the spec names one). Every call has a
timeout; a command that cannot run raises :class:`ClusterAccessError`.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from astrostack.errors import AstrostackError
from astrostack.spec import ClusterSpec, spec_from_dict

DEFAULT_TIMEOUT_S = 120


class ClusterAccessError(AstrostackError):
    """The manager could not be reached or the command could not start."""


@dataclass(frozen=True)
class Result:
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class ManagerAccess(Protocol):
    def run(self, script: str, *, timeout: float = DEFAULT_TIMEOUT_S, stdin: str | None = None) -> Result: ...

    def interactive_argv(self, host: str | None = None) -> list[str]: ...


def _run(argv: Sequence[str], timeout: float, stdin: str | None, what: str) -> Result:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterAccessError(f"{what}: no answer within {timeout:.0f} s") from None
    except FileNotFoundError as exc:
        raise ClusterAccessError(f"{what}: {exc.filename} is not installed") from None
    return Result(done.returncode, done.stdout + done.stderr)


class LocalAccess:
    """The local cloud: `docker exec` into the manager's container-VM."""

    def __init__(self, cluster: str, host: str = "manager"):
        self.cluster = cluster
        self.host = host

    def container(self, host: str | None = None) -> str:
        """The container-VM whose hostname is CLUSTER-HOST (Heat names the container itself)."""
        hostname = f"{self.cluster}-{host or self.host}"
        listing = _run(["docker", "ps", "-q", "--filter", f"label=astrostack.cluster={self.cluster}"],
                       30, None, "docker ps")
        ids = listing.output.split()
        if ids:
            inspect = _run(["docker", "inspect", "-f", "{{.Id}} {{.Config.Hostname}}", *ids], 30, None, "docker inspect")
            for line in inspect.output.splitlines():
                container_id, _, name = line.partition(" ")
                if name.strip() == hostname:
                    return container_id
        raise ClusterAccessError(f"cluster {self.cluster}: no running VM {hostname}")

    def run(self, script: str, *, timeout: float = DEFAULT_TIMEOUT_S, stdin: str | None = None) -> Result:
        argv = ["docker", "exec", "-i", self.container(), "bash", "-c", script]
        return _run(argv, timeout, stdin, f"{self.host} of {self.cluster}")

    def interactive_argv(self, host: str | None = None) -> list[str]:
        return ["docker", "exec", "-it", self.container(host), "bash", "-l"]


class SshAccess:
    """A real cloud: SSH to the manager's floating IP; workers through it."""

    def __init__(self, cluster: str, address: str, user: str, key_file: str | None):
        self.cluster = cluster
        self.address = address
        self.user = user
        self.key_file = key_file

    def _ssh(self, extra: list[str]) -> list[str]:
        argv = ["ssh", "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        if self.key_file:
            argv += ["-i", self.key_file]
        return argv + extra

    def run(self, script: str, *, timeout: float = DEFAULT_TIMEOUT_S, stdin: str | None = None) -> Result:
        argv = self._ssh([f"{self.user}@{self.address}", "sudo bash -c " + shlex.quote(script)])
        result = _run(argv, timeout, stdin, f"ssh {self.user}@{self.address}")
        if result.exit_code == 255:
            raise ClusterAccessError(f"ssh to the manager of {self.cluster} ({self.address}) failed: {result.output.strip()[-200:]}")
        return result

    def interactive_argv(self, host: str | None = None) -> list[str]:
        target = f"{self.user}@{self.address}"
        if host and host != "manager":
            return self._ssh(["-J", target, f"{self.user}@{host}"])
        return self._ssh([target])


def cluster_access(name: str) -> tuple[ClusterSpec, ManagerAccess]:
    """The spec of a known cluster and a way onto its manager."""
    from astrostack import cloud, state
    from astrostack.errors import InvalidInput
    from astrostack.stack import Heat

    record = state.load(name)
    spec = spec_from_dict(record.spec)
    if cloud.is_local(spec.cloud):
        return spec, LocalAccess(name)
    heat = Heat(cloud.connect(spec.cloud))
    ref = heat.find(name)
    if ref is None:
        raise InvalidInput(f"cluster {name} has no stack (status {record.status})")
    address = heat.outputs(ref).get("manager_floating_ip")
    return spec, SshAccess(name, address, spec.servers.user, record.ssh_private_key_path)
