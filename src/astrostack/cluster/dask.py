"""A task queue (kind: task-queue): the Dask scheduler container on the
manager (`astro-dask-scheduler`), a Dask worker container on every worker VM
(`astro-dask-worker`), and Redis (`astro-redis`) where the spec places it,
all started by cloud_init/scripts/taskqueue.sh, which reports each host's
progress on the share as nodes.sh does (`.astrostack/nodes-<host>.json`).

What the scheduler knows is asked in its own container, with a small program
(:mod:`astrostack.cluster.dask_remote`) sent on standard input: one SSH round
trip gives the hosts' reports and the registered workers (and, once all are
there, the smoke test)."""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Optional

from astrostack.cluster import mpi as mpi_mode
from astrostack.cluster.access import ClusterAccessError, ManagerAccess
from astrostack.render import REDIS_PORT, SCHEDULER_PORT
from astrostack.spec import ClusterSpec

SCHEDULER_CONTAINER = "astro-dask-scheduler"
WORKER_CONTAINER = "astro-dask-worker"
REDIS_CONTAINER = "astro-redis"
VIEW_TIMEOUT_S = 90
MARK = "DASK "


@dataclass
class QueueView:
    reports: mpi_mode.HostsView = field(default_factory=mpi_mode.HostsView)
    workers: int = 0
    names: list[str] = field(default_factory=list)
    smoke: Optional[dict[str, Any]] = None
    scheduler_error: str = ""

    @property
    def smoke_ok(self) -> bool:
        return bool(self.smoke and self.smoke.get("ok"))


def remote_program(package: str, name: str) -> str:
    """The text of a program astrostack runs on a cluster (package data, never a path in the tree)."""
    return resources.files(package).joinpath(name).read_text()


def scheduler_python(argv: list[str], program: str, prefix: str = "") -> str:
    """Shell, run on the manager, feeding PROGRAM to python3 in the scheduler container
    (its errors with its output); PREFIX goes before `docker` (e.g. `timeout 60`)."""
    args = " ".join(shlex.quote(a) for a in argv)
    delimiter = "ASTROSTACK_PY_END"
    assert delimiter not in program
    return (f"{prefix}docker exec -i {SCHEDULER_CONTAINER} python3 - {args} 2>&1 <<'{delimiter}'\n"
            f"{program}\n{delimiter}\n")


def view_script(spec: ClusterSpec, *, smoke: bool) -> str:
    argv = [str(spec.nodes), spec.queue.redis.value, str(REDIS_PORT)] + (["--smoke"] if smoke else [])
    inner = scheduler_python(argv, remote_program("astrostack.cluster", "dask_remote.py"), prefix="timeout 60 ")
    return (f"{mpi_mode.view_script(spec)}\n"
            f"if docker ps -q --filter name=^{SCHEDULER_CONTAINER}$ | grep -q .; then\n"
            f"out=$({inner}) || true\n"
            f'echo "{MARK}$(printf %s "$out" | tail -n 1)"\n'
            f"else echo '{MARK}{{\"error\": \"the scheduler container is not running yet\"}}'; fi\n")


def parse_view(output: str) -> QueueView:
    view = QueueView(reports=mpi_mode.parse_view(output))
    for line in output.splitlines():
        if not line.startswith(MARK):
            continue
        payload = line[len(MARK):].strip()
        try:
            data = json.loads(payload)
        except ValueError:
            view.scheduler_error = f"the scheduler did not answer: {payload[-200:] or 'no output'}"
            continue
        if "error" in data:
            view.scheduler_error = str(data["error"])
        view.workers = int(data.get("workers", 0))
        view.names = list(data.get("names", []))
        view.smoke = data.get("smoke")
    return view


def observe(spec: ClusterSpec, access: ManagerAccess, *, smoke: bool = False) -> QueueView:
    return parse_view(access.run(view_script(spec, smoke=smoke), timeout=VIEW_TIMEOUT_S).output)


RETIRE_PROGRAM = """
import json, sys
from distributed import Client
hosts = set(sys.argv[1:])
with Client("tcp://127.0.0.1:%d", timeout=10) as client:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    names = [w["name"] for w in workers.values() if str(w.get("name")).rsplit("-", 1)[0] in hosts
             or str(w.get("name")) in hosts]
    if names:
        client.retire_workers(names=names, close_workers=True)
    print(json.dumps({"retired": len(names)}))
""" % SCHEDULER_PORT


# A retired worker's `dask worker` exits 0, and the container's restart policy
# (unless-stopped, so that a rebooted VM gets its worker back) would start it
# again: it registered anew and took tasks until its VM was gone. So the policy
# goes first, and comes back if the host stays after all.
KEEP_DOWN = f"docker update --restart=no {WORKER_CONTAINER} >/dev/null"
BRING_BACK = (f"docker update --restart=unless-stopped {WORKER_CONTAINER} >/dev/null 2>&1 && "
              f"docker start {WORKER_CONTAINER} >/dev/null 2>&1; true")
ON_HOST_TIMEOUT_S = 60


def retire(access: ManagerAccess, hosts: Mapping[str, ManagerAccess]) -> None:
    """The Dask workers of HOSTS (worker-N: SSH to it, each about to be removed) hand
    their data over and leave the scheduler, so it never waits for a worker that is
    gone; their containers are first kept from restarting. A host that does not
    answer is passed over: its worker is gone with it (a stopped VM)."""
    if not hosts:
        return
    for there in hosts.values():
        _on_host_if_it_answers(there, KEEP_DOWN)
    result = access.run(scheduler_python(list(hosts), RETIRE_PROGRAM), timeout=VIEW_TIMEOUT_S)
    if not result.ok:
        raise ClusterAccessError(f"retiring the Dask workers of {', '.join(hosts)}: {result.output.strip()[-200:]}")


def reinstate(hosts: Mapping[str, ManagerAccess]) -> None:
    """Workers retired by a scale that failed come back where their VMs stayed (a host
    booted since has a worker of its own: nothing to do there)."""
    for there in hosts.values():
        _on_host_if_it_answers(there, BRING_BACK)


def _on_host_if_it_answers(there: ManagerAccess, script: str) -> None:
    # unreachable: nothing runs there that could register with the scheduler
    with contextlib.suppress(ClusterAccessError):
        there.run(script, timeout=ON_HOST_TIMEOUT_S)
