"""What a notebook needs to use a task-queue cluster: the Dask scheduler's
address (through an SSH tunnel to the manager, or at the floating IP from
``ssh.allowed_cidr``), the dashboard, the Redis store(s), and the Dask
versions a Client must match. The Redis password is read from the manager
only when asked for, and then only printed, never stored."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from astrostack.cluster import dask as task_queue
from astrostack.cluster.access import ClusterAccessError, SshAccess, cluster_access, worker_addresses
from astrostack.errors import InvalidInput
from astrostack.render import DASHBOARD_PORT, REDIS_PORT, SCHEDULER_PORT
from astrostack.spec import ClusterSpec

PASSWORD_FILE = "/etc/astrostack/redis-password"  # cloud_init/scripts/taskqueue.sh
HIDDEN = "****"
VERSIONS_PROGRAM = ("import dask, distributed, redis; "
                    "print(f'dask=={dask.__version__} distributed=={distributed.__version__} redis=={redis.__version__}')")


@dataclass
class Connection:
    cluster: str
    scheduler: str
    scheduler_through_tunnel: str
    tunnel: list[str]
    dashboard: Optional[str]
    redis: list[str]
    redis_through_tunnel: Optional[str]
    versions: str
    password: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tunnel_argv(access: SshAccess, forwards: list[tuple[int, str]]) -> list[str]:
    """`ssh -N -L ...` through the manager: each (local port, remote host:port)."""
    argv = ["ssh", *access.options(), "-N"]
    for port, remote in forwards:
        argv += ["-L", f"127.0.0.1:{port}:{remote}"]
    return argv + [f"{access.user}@{access.address}"]


def redis_hosts(spec: ClusterSpec, outputs: dict[str, Any]) -> list[str]:
    if spec.queue.redis.value == "scheduler":
        return [str(outputs.get("manager_private_ip") or "")]
    return worker_addresses(outputs)


def redis_url(host: str, password: Optional[str]) -> str:
    return f"redis://:{password or HIDDEN}@{host}:{REDIS_PORT}/0"


def connection(name: str, *, show_password: bool = False) -> Connection:
    spec, access = cluster_access(name)
    if not spec.is_task_queue:
        raise InvalidInput(f"cluster {name} is kind {spec.kind.value}: `connect` is for task-queue clusters "
                           f"(`astrostack ssh {name}` reaches the manager)")
    from astrostack.cluster.access import _stack_outputs

    outputs = _stack_outputs(name, spec.cloud)
    password = read_password(access) if show_password else None
    hosts = redis_hosts(spec, outputs)
    forwards = [(SCHEDULER_PORT, f"127.0.0.1:{SCHEDULER_PORT}")]
    if spec.queue.dashboard:
        forwards.append((DASHBOARD_PORT, f"127.0.0.1:{DASHBOARD_PORT}"))
    if hosts:
        forwards.append((REDIS_PORT, f"{hosts[0]}:{REDIS_PORT}"))
    notes = [f"the scheduler and dashboard answer at the floating IP only from ssh.allowed_cidr "
             f"({spec.ssh.allowed_cidr}); Redis only on the cluster network (use the tunnel)"]
    if not show_password:
        notes.append(f"the Redis password is not shown: `astrostack connect {name} --show-password`")
    if spec.queue.redis.value == "per-worker" and len(hosts) > 1:
        notes.append("one Redis per worker VM: the tunnel reaches the first; each holds the results of the "
                     "tasks its VM ran")
    return Connection(
        cluster=name,
        scheduler=f"tcp://{access.address}:{SCHEDULER_PORT}",
        scheduler_through_tunnel=f"tcp://127.0.0.1:{SCHEDULER_PORT}",
        tunnel=tunnel_argv(access, forwards),
        dashboard=f"http://{access.address}:{DASHBOARD_PORT}/status" if spec.queue.dashboard else None,
        redis=[redis_url(host, password) for host in hosts],
        redis_through_tunnel=redis_url("127.0.0.1", password) if hosts else None,
        versions=scheduler_versions(access),
        password=password,
        notes=notes,
    )


def read_password(access: SshAccess) -> str:
    result = access.run(f"cat {PASSWORD_FILE}", timeout=60)
    if not result.ok or not result.output.strip():
        raise ClusterAccessError(f"cannot read the Redis password on the manager of {access.cluster}")
    return result.output.strip()


def scheduler_versions(access: SshAccess) -> str:
    result = access.run(f"docker exec {task_queue.SCHEDULER_CONTAINER} python3 -c {shlex.quote(VERSIONS_PROGRAM)}",
                        timeout=60)
    lines = result.output.strip().splitlines()
    return lines[-1] if result.ok and lines else "unknown (the scheduler container does not answer)"
