"""`astrostack up` on the local cloud against a hand-run baseline: phase times, memory per VM.

    python benchmarks/local_cloud.py [--config 3x12 --config 6x96 ...] [--only up|baseline]

For each configuration HOSTSxNODES (default 3x12 3x48 3x96 6x12 6x48 6x96),
one cluster at a time:

1. ``astrostack up`` (``lifecycle.up``, as the CLI runs it) of a cluster
   ``bench-lc-HxN`` on 10.71.0.0/24. Phases stack / hosts / nodes come from its
   record; ``prepare`` is the rest of the call (engine check, preflight, image
   staging by `docker save`); total is the whole call. Memory of its VMs is read
   once it is ready; then ``down``.
2. The baseline: the same work by hand on HOSTS + 1 VMs booted directly with
   ``vm.boot_vm`` (an empty ``#cloud-config``) on a Docker network of their own
   (10.72.0.0/24) sharing a host directory: `docker save` of the image onto the
   share, then in parallel dockerd in every host (daemon.json trusting the
   registry) and Debian's docker-registry on the NFS VM (as nfs.sh); `docker
   swarm init` on the manager, `join` on the others; then, as nodes.sh does,
   wait for the hosts, `docker load` the archive on the manager and push it to
   the registry, create the SSH secrets and the master and worker services with
   nodes.sh's flags (every host pulls from the registry); wait until every task
   runs; then the mpirun smoke test across all nodes that `up` also waits for
   (``SwarmNodeProbe``, so "ready" means the same). Everything is removed after.

The table gives up's phases, up's total, the baseline's total (and, in
brackets, its time until every task runs, without the smoke test), the ratio
up / baseline (target <= 1.3) and memory per VM: RSS (``total_rss`` of each VM
container's memory cgroup, its inner containers included) and usage as
``docker stats`` shows it (usage minus inactive file cache), summed over the
cluster's VMs (NFS included) and divided by their number, read while ready.

Before each measurement the script waits (30 s steps, up to 20 min) until no
container named ``ft-*`` (functional tests) runs, and none appears for 30 s
more (a gap between two tests is not quiet); after 20 min it measures anyway.
A measurement during which such containers ran is marked ``*``.

Exit 0 if every ratio meets the target, 1 if one misses it (the per-phase
comparison says where the extra time goes), 2 if a measurement failed.
Needs the local cloud (``astrostack local start``; ``ASTROSTACK_HEAT_VENV`` is
honoured as by ``astrostack up``) and the images vm and mpi-base.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from datetime import time as clock_time
from pathlib import Path
from typing import Callable, Optional, TypeVar

import docker.errors
import yaml

ROOT = Path(__file__).resolve().parents[1]
try:
    from astrostack import lifecycle
    from astrostack.cluster import swarm
    from astrostack.cluster.access import ClusterAccessError, LocalAccess, Result
    from astrostack.cluster.probe import SwarmNodeProbe
    from astrostack.errors import AstrostackError
    from astrostack.local import vm
    from astrostack.local.cloud import cluster_vms
    from astrostack.monitor import PhaseEvent
    from astrostack.spec import ClusterSpec, spec_from_dict
    from astrostack.state import ClusterRecord
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
    from astrostack import lifecycle
    from astrostack.cluster import swarm
    from astrostack.cluster.access import ClusterAccessError, LocalAccess, Result
    from astrostack.cluster.probe import SwarmNodeProbe
    from astrostack.errors import AstrostackError
    from astrostack.local import vm
    from astrostack.local.cloud import cluster_vms
    from astrostack.monitor import PhaseEvent
    from astrostack.spec import ClusterSpec, spec_from_dict
    from astrostack.state import ClusterRecord

EXAMPLE_SPEC = ROOT / "examples" / "local.yaml"
DEFAULT_CONFIGS = ("3x12", "3x48", "3x96", "6x12", "6x48", "6x96")
UP_CIDR = "10.71.0.0/24"
BASELINE_CIDR = "10.72.0.0/24"
TARGET_RATIO = 1.3
PHASE_TIMEOUT_S = 900
BUSY_PREFIX = "ft-"              # functional tests of another engineer
QUIET_STEP_S = 30
QUIET_LIMIT_S = 20 * 60
BENCH_LABEL = "astrostack.bench"
REGISTRY_PID_FILE = "/run/docker-registry.pid"   # in the NFS VM
SHARE_PARENT = "/var/tmp"        # same disk as the local cloud's shares
MIB = 1024 * 1024
T = TypeVar("T")


class BenchError(RuntimeError):
    """A step of a measurement failed (one line)."""


# What a failed measurement raises: reported, then the next one runs.
MEASUREMENT_ERRORS = (AstrostackError, vm.VMError, BenchError, subprocess.SubprocessError, OSError)


def say(message: str) -> None:
    print(message, flush=True)


# --- a quiet machine ------------------------------------------------------------


def busy_containers(prefix: str = BUSY_PREFIX) -> list[str]:
    """Names of running containers that start with ``prefix``."""
    listing = subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True,
                             text=True, timeout=60, check=True)
    return [name for name in listing.stdout.split() if name.startswith(prefix)]


def quiet_for(seconds: float, step_s: float = 5) -> bool:
    """True if no ``ft-*`` container shows up for ``seconds`` (a gap between two tests is not quiet)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(step_s)
        if busy_containers():
            return False
    return True


def wait_until_quiet(what: str, limit_s: float = QUIET_LIMIT_S, step_s: float = QUIET_STEP_S) -> bool:
    """Wait until no ``ft-*`` container runs, for ``step_s`` in a row; False if the limit passed
    (then measure anyway)."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = busy_containers()
        if not busy and quiet_for(step_s):
            return True
        if time.monotonic() >= deadline:
            say(f"[{what}] functional tests still running after {limit_s / 60:.0f} min: measuring anyway")
            return False
        if busy:
            say(f"[{what}] functional tests running ({len(busy)} ft-* containers, e.g. {busy[0]}): "
                f"waiting {step_s:.0f} s")
            time.sleep(step_s)


class ContentionWatch:
    """Samples `docker ps` in the background during a measurement: did ft-* containers run?"""

    def __init__(self, step_s: float = 5.0):
        self.step_s = step_s
        self.seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ContentionWatch:
        self.seen = bool(busy_containers())
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.step_s):
            try:
                self.seen = self.seen or bool(busy_containers())
            except (subprocess.SubprocessError, OSError):
                continue


# --- memory ---------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Memory of a cluster's VM containers (inner containers included), in bytes."""

    vms: int
    rss: int
    usage: int

    def rss_per_vm_mib(self) -> float:
        return self.rss / self.vms / MIB if self.vms else 0.0

    def usage_per_vm_mib(self) -> float:
        return self.usage / self.vms / MIB if self.vms else 0.0


def memory_cgroup(container_id: str) -> tuple[Path, int]:
    """The container's memory cgroup directory and the cgroup version (1 or 2)."""
    pid = vm.client().api.inspect_container(container_id)["State"]["Pid"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), 1
        if controllers == "":
            return Path("/sys/fs/cgroup") / path.lstrip("/"), 2
    raise BenchError(f"no memory cgroup for container {container_id[:12]}")


def _memory_stat(folder: Path) -> dict[str, int]:
    pairs = (line.split() for line in (folder / "memory.stat").read_text().splitlines())
    return {key: int(value) for key, value in pairs}


def container_memory(container_id: str) -> tuple[int, int]:
    """(RSS, usage as `docker stats` shows it) of one container's cgroup, hierarchy included."""
    folder, version = memory_cgroup(container_id)
    stat = _memory_stat(folder)
    if version == 1:
        usage = int((folder / "memory.usage_in_bytes").read_text())
        return stat["total_rss"], usage - stat.get("total_inactive_file", 0)
    usage = int((folder / "memory.current").read_text())
    return stat["anon"], usage - stat.get("inactive_file", 0)


def memory_of(container_ids: Sequence[str]) -> Memory:
    samples = [container_memory(container_id) for container_id in container_ids]
    return Memory(len(samples), sum(rss for rss, _ in samples), sum(usage for _, usage in samples))


# --- small helpers ----------------------------------------------------------------


class Laps:
    """Named consecutive intervals of one stopwatch."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = now - self.last
        self.last = now

    @property
    def total(self) -> float:
        return self.last - self.started


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def in_parallel(action: Callable[[T], object], items: Iterable[T]) -> None:
    """Run ``action`` on every item in threads; re-raise the first failure."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        for future in [pool.submit(action, item) for item in items]:
            future.result()


def bench_spec(name: str, hosts: int, nodes: int, cidr: str) -> ClusterSpec:
    """examples/local.yaml with the bench's name, size, network and generous timeouts."""
    data = yaml.safe_load(EXAMPLE_SPEC.read_text())
    data.update(name=name, hosts=hosts, nodes=nodes)
    data["network"] = {**data["network"], "cidr": cidr}
    data["timeouts"] = {"stack_create": PHASE_TIMEOUT_S, "hosts_ready": PHASE_TIMEOUT_S,
                        "nodes_ready": PHASE_TIMEOUT_S, "delete": PHASE_TIMEOUT_S}
    return spec_from_dict(data, source=f"bench {name}")


def parse_config(text: str) -> tuple[int, int]:
    hosts, sep, nodes = text.partition("x")
    if not (sep and hosts.isdigit() and nodes.isdigit()):
        raise argparse.ArgumentTypeError(f"expected HOSTSxNODES such as 3x12, not {text!r}")
    return int(hosts), int(nodes)


# --- astrostack up ------------------------------------------------------------------


@dataclass
class UpResult:
    phases: dict[str, float]    # prepare, stack, hosts, nodes; publish + services = nodes when known
    total: float
    memory: Memory
    down_s: float
    contended: bool


def phase_seconds(record: ClusterRecord) -> dict[str, float]:
    seconds = {}
    for phase in ("stack", "hosts", "nodes"):
        entry = record.phases[phase]
        if entry.started is None or entry.finished is None:
            raise BenchError(f"phase {phase} of {record.name} has no end")
        seconds[phase] = (entry.finished - entry.started).total_seconds()
    return seconds


def show_phase_event(event: PhaseEvent) -> None:
    if event.kind != "progress":
        say(f"  up: {event.phase} {event.kind} at {event.elapsed:.1f} s ({event.message})")


def down_cluster(name: str) -> float:
    """`astrostack down`; its time. Failures are printed, not raised (cleanup)."""
    started = time.monotonic()
    try:
        lifecycle.down(name)
    except AstrostackError as exc:
        say(f"  LEFTOVER: down {name} failed ({exc}); run `astrostack down {name} --force`")
    return time.monotonic() - started


PUBLISHED_LINE = re.compile(r"^astrostack\[manager/\S+\] (\d\d:\d\d:\d\d) published ")


def published_clock(cluster: str) -> Optional[str]:
    """UTC HH:MM:SS at which the manager pushed the staged image (nodes.sh's log), if it says."""
    try:
        log = LocalAccess(cluster).run("cat /var/log/astrostack-nodes.log", timeout=30).output
    except ClusterAccessError:
        return None
    stamps = [match.group(1) for match in map(PUBLISHED_LINE.match, log.splitlines()) if match]
    return stamps[-1] if stamps else None


def split_nodes_phase(record: ClusterRecord, published: Optional[str]) -> dict[str, float]:
    """The nodes phase as publish (to the image pushed) + services (the rest); {} if unknown."""
    nodes = record.phases["nodes"]
    if published is None or nodes.started is None or nodes.finished is None:
        return {}
    started = nodes.started.astimezone(timezone.utc)
    stamp = datetime.combine(started.date(), clock_time.fromisoformat(published), tzinfo=timezone.utc)
    if stamp < started - timedelta(hours=12):
        stamp += timedelta(days=1)  # published after midnight
    length = (nodes.finished - nodes.started).total_seconds()
    publish = min(length, max(0.0, (stamp - started).total_seconds() + 0.5))  # whole seconds: mid-second
    return {"publish": publish, "services": length - publish}


def measure_up(spec: ClusterSpec) -> UpResult:
    """`astrostack up`, memory while ready, then `down` (always)."""
    runtime = lifecycle.Runtime(on_event=show_phase_event, note=lambda line: say(f"  up: {line}"))
    down_s = 0.0
    with ContentionWatch() as watch:
        try:
            started = time.monotonic()
            record = lifecycle.up(spec, keep_on_failure=False, runtime=runtime)
            total = time.monotonic() - started
            memory = memory_of(cluster_vms(spec.name))
            published = published_clock(spec.name)
        finally:
            down_s = down_cluster(spec.name)
    phases = phase_seconds(record)
    phases = {"prepare": total - sum(phases.values()), **phases, **split_nodes_phase(record, published)}
    return UpResult(phases, total, memory, down_s, watch.seen)


# --- the hand-run baseline ---------------------------------------------------------------


class VMAccess:
    """ManagerAccess (cluster/access.py) for a VM booted by hand: `docker exec`, as LocalAccess."""

    def __init__(self, container_id: str):
        self.container_id = container_id

    def run(self, script: str, *, timeout: float = 120, stdin: Optional[str] = None) -> Result:
        argv = ["docker", "exec", "-i", self.container_id, "bash", "-c", script]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterAccessError(f"no answer from {self.container_id[:12]} within {timeout:.0f} s") from None
        return Result(done.returncode, done.stdout + done.stderr)

    def interactive_argv(self, host: Optional[str] = None) -> list[str]:
        return ["docker", "exec", "-it", self.container_id, "bash", "-l"]


@dataclass
class HandCluster:
    """HOSTS VMs and one NFS/registry VM booted directly and set up by hand.

    Addresses as the stack gives them: NFS .2, manager .3, workers from .4.
    """

    spec: ClusterSpec
    cidr: str
    vms: dict[str, str] = field(default_factory=dict)   # host name -> container id
    share: Optional[Path] = None

    @property
    def network(self) -> str:
        return f"{self.spec.name}-net"

    @property
    def hosts(self) -> list[str]:
        return ["manager"] + [f"worker-{i}" for i in range(self.spec.hosts - 1)]

    def ip(self, host: str) -> str:
        order = ["nfs"] + self.hosts
        return str(ipaddress.ip_network(self.cidr).network_address + 2 + order.index(host))

    @property
    def registry(self) -> str:
        return f"{self.ip('nfs')}:5000"

    def container_name(self, host: str) -> str:
        return f"{self.spec.name}-{host}"

    # commands in the VMs

    def run(self, host: str, script: str, timeout_s: float = 300) -> str:
        exit_code, output = vm.vm_exec(self.vms[host], ["bash", "-c", script], timeout_s=timeout_s)
        if exit_code != 0:
            raise BenchError(f"{self.container_name(host)}: `{script.strip()[:80]}` exited {exit_code}: "
                             f"{output.strip()[-300:]}")
        return output

    def write_file(self, host: str, path: str, content: str) -> None:
        self.run(host, f"mkdir -p {shlex.quote(str(Path(path).parent))} && "
                       f"printf '%s' {shlex.quote(content)} >{shlex.quote(path)}")

    # prepare and boot

    def create_network(self) -> None:
        pool = {"Subnet": self.cidr, "Gateway": str(ipaddress.ip_network(self.cidr).network_address + 1)}
        vm.client().api.create_network(self.network, driver="bridge", ipam={"Driver": "default", "Config": [pool]},
                                       labels={BENCH_LABEL: self.spec.name})

    def stage_image(self, image: str) -> str:
        """`docker save` onto the share, as `up` stages it; the archive's path inside the hosts."""
        self.share = Path(tempfile.mkdtemp(prefix=f"{self.spec.name}-share-", dir=SHARE_PARENT))
        folder = self.share / ".astrostack" / "images"
        folder.mkdir(parents=True)
        archive = folder / (image.replace("/", "_").replace(":", "_") + ".tar")
        subprocess.run(["docker", "save", "-o", str(archive), image], check=True, capture_output=True, timeout=600)
        return f"{self.spec.nfs.mount_point}/{archive.relative_to(self.share)}"

    def boot(self, host: str) -> None:
        mount = self.spec.nfs.export_path if host == "nfs" else self.spec.nfs.mount_point
        self.vms[host] = vm.boot_vm(self.container_name(host), "#cloud-config\n{}\n", {}, self.network,
                                    self.ip(host), {BENCH_LABEL: self.spec.name}, [(str(self.share), mount)])

    def boot_all(self) -> None:
        in_parallel(self.boot, ["nfs"] + self.hosts)

    # hosts: registry, dockerd, swarm

    def start_registry(self) -> None:
        """Debian's docker-registry on the share, as nfs.sh starts it."""
        vm.wait_cloud_init(self.vms["nfs"], PHASE_TIMEOUT_S)
        root = f"{self.spec.nfs.export_path}/.registry"
        config = (f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
                  f"  delete:\n    enabled: true\nhttp:\n  addr: :5000\n")
        self.write_file("nfs", "/etc/docker/registry/config.yml", config)
        self.run("nfs", f"mkdir -p {root}; setsid docker-registry serve /etc/docker/registry/config.yml "
                        f">/var/log/docker-registry.log 2>&1 </dev/null & echo $! >{REGISTRY_PID_FILE}")
        self.run("nfs", "for i in $(seq 30); do curl -fsS http://127.0.0.1:5000/v2/ >/dev/null && exit 0; "
                        "sleep 1; done; exit 1")

    def start_dockerd(self, host: str) -> None:
        """dockerd trusting the cluster registry, as common.sh's start_docker."""
        vm.wait_cloud_init(self.vms[host], PHASE_TIMEOUT_S)
        daemon = ('{"insecure-registries": ["%s"], "log-driver": "json-file", "log-opts": {"max-size": "20m"}}\n'
                  % self.registry)
        self.write_file(host, "/etc/docker/daemon.json", daemon)
        self.run(host, "setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &")
        self.run(host, "for i in $(seq 60); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1")

    def init_swarm(self) -> str:
        """swarm init and the overlay on the manager; the worker join token."""
        self.start_dockerd("manager")
        overlay = self.spec.overlay
        self.run("manager", f"docker swarm init --advertise-addr {self.ip('manager')} >/dev/null && "
                            f"docker network create --driver overlay --attachable --subnet {overlay.subnet} "
                            f"{overlay.name} >/dev/null")
        return self.run("manager", "docker swarm join-token -q worker").strip()

    def join_swarm(self, host: str, token: Future) -> None:
        self.start_dockerd(host)
        self.run(host, f"docker swarm join --token {token.result()} {self.ip('manager')}:2377 >/dev/null")

    def bring_up_hosts(self) -> None:
        """Registry, dockerd everywhere and the swarm, as the hosts do before they signal."""
        workers = self.hosts[1:]
        with ThreadPoolExecutor(max_workers=len(workers) + 2) as pool:
            token = pool.submit(self.init_swarm)
            futures = [pool.submit(self.start_registry), token]
            futures += [pool.submit(self.join_swarm, host, token) for host in workers]
            for future in futures:
                future.result()

    # nodes: as nodes.sh

    def wait_for_hosts(self) -> None:
        self.run("manager", f"until [ $(docker node ls --format '{{{{.Status}}}} {{{{.Availability}}}}' | "
                            f"grep -c '^Ready Active$') -ge {self.spec.hosts} ]; do sleep 2; done",
                 timeout_s=PHASE_TIMEOUT_S)

    def publish_image(self, archive: str) -> str:
        """Load the staged archive on the manager, push it to the registry; the image's reference there."""
        loaded = self.run("manager", f"docker load -i {archive} | sed -n 's/^Loaded image: //p' | head -n1").strip()
        ref = f"{self.registry}/{loaded}"
        self.run("manager", f"docker tag {loaded} {ref} && docker push {ref} >/dev/null", timeout_s=PHASE_TIMEOUT_S)
        return ref

    def create_secrets(self) -> None:
        name = self.spec.name
        self.run("manager", f"d=$(mktemp -d) && ssh-keygen -q -t ed25519 -N '' -f $d/id_ed25519 && "
                            f"docker secret create {name}-ssh-key $d/id_ed25519 >/dev/null && "
                            f"docker secret create {name}-ssh-pub $d/id_ed25519.pub >/dev/null && rm -rf $d")

    def service_argv(self, service: str, role: str, replicas: int, extra: Sequence[str], ref: str) -> list[str]:
        """nodes.sh's create_service, flag for flag."""
        spec = self.spec
        return ["docker", "service", "create", "--detach", "--quiet", "--name", service,
                "--replicas", str(replicas), "--network", spec.overlay.name, "--endpoint-mode", "dnsrr",
                "--hostname", "{{.Service.Name}}-{{.Task.Slot}}",
                "--label", f"astrostack.cluster={spec.name}", "--label", f"astrostack.role={role}",
                "--secret", f"source={spec.name}-ssh-key,target=ssh_key,mode=0400",
                "--secret", f"source={spec.name}-ssh-pub,target=ssh_pub,mode=0444",
                "--mount", f"type=bind,source={spec.nfs.mount_point},target=/share",
                "--env", f"ASTRO_ROLE={role}", "--env", f"ASTRO_CLUSTER={spec.name}",
                "--env", f"ASTRO_SLOTS={spec.application.slots_per_node}",
                "--env", f"ASTRO_OVERLAY_CIDR={spec.overlay.subnet}", "--env", "ASTRO_MPI_PORTS=any",
                "--restart-condition", "on-failure", "--restart-max-attempts", "3", *extra, ref]

    def create_services(self, ref: str) -> None:
        master, worker = swarm.service_names(self.spec)
        argv = self.service_argv(master, "master", 1, ["--constraint", "node.role==manager"], ref)
        self.run("manager", shlex.join(argv) + " >/dev/null")
        if self.spec.nodes > 1:
            argv = self.service_argv(worker, "worker", self.spec.nodes - 1, [], ref)
            self.run("manager", shlex.join(argv) + " >/dev/null")

    def wait_tasks_running(self) -> None:
        """Every task Running (what `up` looks at first); a fatal task error stops it."""
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        access = VMAccess(self.vms["manager"])
        while True:
            view = swarm.observe(self.spec, access)
            if view.fatal_error:
                raise BenchError(f"baseline task failed: {view.fatal_error}")
            if view.tasks_running >= self.spec.nodes and view.nodes_ready >= self.spec.hosts:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"baseline: {view.tasks_running}/{self.spec.nodes} tasks run "
                                 f"after {PHASE_TIMEOUT_S} s")
            time.sleep(1)

    def start_services(self, ref: str) -> None:
        self.create_secrets()
        self.create_services(ref)
        self.wait_tasks_running()

    def smoke(self) -> None:
        """The readiness check of `up`'s nodes phase: hostfile + mpirun across every node."""
        probe = SwarmNodeProbe(self.spec, VMAccess(self.vms["manager"]))
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while True:
            view = probe.observe_nodes()
            if view.smoke_ok:
                return
            if view.failure or time.monotonic() > deadline:
                raise BenchError(f"baseline smoke test: {view.failure or view.detail}")
            time.sleep(1)

    # cleanup

    def close(self) -> None:
        """Remove the VMs (and their volumes), the network and the share; report, never raise."""
        for host, container_id in self.vms.items():
            try:
                vm.delete_vm(container_id)
            except vm.VMError as exc:
                say(f"  LEFTOVER: VM {self.container_name(host)}: {exc}")
        try:
            vm.client().api.remove_network(self.network)
        except docker.errors.NotFound:
            pass  # never created
        except docker.errors.APIError as exc:
            say(f"  LEFTOVER: network {self.network}: {exc}")
        if self.share is not None:
            shutil.rmtree(self.share, ignore_errors=True)


@dataclass
class BaselineResult:
    phases: dict[str, float]     # prepare, boot, hosts, publish, tasks (all running), smoke
    memory: Memory
    cleanup_s: float
    contended: bool

    @property
    def total(self) -> float:
        return sum(self.phases.values())

    @property
    def to_tasks_running(self) -> float:
        return self.total - self.phases["smoke"]


def measure_baseline(spec: ClusterSpec) -> BaselineResult:
    """The same deployment by hand; everything removed after (always)."""
    cluster = HandCluster(spec, BASELINE_CIDR)
    laps = Laps()
    with ContentionWatch() as watch:
        try:
            cluster.create_network()
            archive = cluster.stage_image(spec.application.image)
            laps.lap("prepare")
            cluster.boot_all()
            laps.lap("boot")
            cluster.bring_up_hosts()
            laps.lap("hosts")
            cluster.wait_for_hosts()
            ref = cluster.publish_image(archive)
            laps.lap("publish")
            cluster.start_services(ref)
            laps.lap("tasks")
            cluster.smoke()
            laps.lap("smoke")
            memory = memory_of(list(cluster.vms.values()))
        finally:
            cleanup_s = timed(cluster.close)
    return BaselineResult(laps.seconds, memory, cleanup_s, watch.seen)


# --- report ---------------------------------------------------------------------------


@dataclass
class Row:
    hosts: int
    nodes: int
    up: Optional[UpResult] = None
    baseline: Optional[BaselineResult] = None
    error: str = ""

    @property
    def config(self) -> str:
        return f"{self.hosts} hosts / {self.nodes} nodes"

    @property
    def ratio(self) -> Optional[float]:
        if self.up is None or self.baseline is None:
            return None
        return self.up.total / self.baseline.total

    @property
    def contended(self) -> bool:
        return any(result is not None and result.contended for result in (self.up, self.baseline))


def _mem(memory: Optional[Memory]) -> str:
    if memory is None:
        return "-"
    return f"{memory.rss_per_vm_mib():.0f} / {memory.usage_per_vm_mib():.0f}"


def summary_table(rows: Sequence[Row]) -> list[str]:
    lines = ["| config | up: prepare / stack / hosts / nodes (s) | up total (s) | baseline total (s) "
             "[to tasks running] | ratio up/baseline | memory/VM up: RSS / usage (MiB) "
             "| memory/VM baseline: RSS / usage (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        up, base = row.up, row.baseline
        phases = " / ".join(f"{up.phases[p]:.1f}" for p in ("prepare", "stack", "hosts", "nodes")) if up else "-"
        ratio = f"{row.ratio:.2f} ({'ok' if row.ratio <= TARGET_RATIO else 'MISS'})" if row.ratio else "-"
        mark = " *" if row.contended else ""
        lines.append(f"| {row.config}{mark} | {phases} | {up.total:.1f} |" if up else f"| {row.config}{mark} | - | - |")
        lines[-1] += (f" {base.total:.1f} [{base.to_tasks_running:.1f}] |" if base else " - |")
        lines[-1] += f" {ratio} | {_mem(up.memory if up else None)} | {_mem(base.memory if base else None)} |"
    return lines


# Like-for-like groups: (label, up phases, baseline phases). up's stack phase ends when its
# first-level Heat resources are done, so its VM creation is compared with the hosts.
COMPARED = (
    ("prepare", ("prepare",), ("prepare",)),
    ("VMs to hosts ready", ("stack", "hosts"), ("boot", "hosts")),
    ("image published", ("publish",), ("publish",)),
    ("services to ready", ("services",), ("tasks", "smoke")),
)


def _sum(phases: dict[str, float], names: Sequence[str]) -> Optional[float]:
    return sum(phases[name] for name in names) if all(name in phases for name in names) else None


def extra_times(row: Row) -> list[tuple[str, Optional[float], Optional[float]]]:
    """(group, up seconds, baseline seconds) for each like-for-like group."""
    assert row.up is not None and row.baseline is not None
    return [(label, _sum(row.up.phases, ups), _sum(row.baseline.phases, bases)) for label, ups, bases in COMPARED]


def extra_time_table(rows: Sequence[Row]) -> list[str]:
    """Per group: up against the baseline, and the difference."""
    lines = ["| config | " + " | ".join(label for label, _, _ in COMPARED) + " | total |",
             "|---|" + "---|" * (len(COMPARED) + 1)]
    for row in rows:
        if row.up is None or row.baseline is None:
            continue
        cells = [f"{up:.1f} vs {base:.1f} ({up - base:+.1f})" if up is not None and base is not None else "?"
                 for _, up, base in extra_times(row)]
        total = f"{row.up.total:.1f} vs {row.baseline.total:.1f} ({row.up.total - row.baseline.total:+.1f})"
        lines.append(f"| {row.config} | " + " | ".join(cells) + f" | {total} |")
    return lines


def print_report(rows: Sequence[Row]) -> None:
    say("\n## up against the hand-run baseline\n")
    for line in summary_table(rows):
        say(line)
    say(f"\nratio target <= {TARGET_RATIO}; * = ft-* containers (functional tests) ran during the measurement; "
        "memory = sum over the cluster's VMs (NFS included) / VMs, read while ready")
    say("\n## where the time goes: up vs baseline (s, difference)\n")
    for line in extra_time_table(rows):
        say(line)
    say("\nprepare: up = engine check, preflight, docker save onto the share; baseline = docker save. "
        "VMs to hosts ready: up = stack + hosts phases (every host signalled Heat); baseline = containers "
        "started, cloud-init done, dockerd, registry, swarm init/join. image published: up = from the nodes "
        "phase's start to the manager's `published` log line (1 s resolution); baseline = wait for the hosts, "
        "docker load + push. services to ready: up = the rest of the nodes phase; baseline = secrets, "
        "services, every task running, mpirun smoke test.")
    for row in rows:
        if row.error:
            say(f"{row.config}: FAILED: {row.error}")
        for line in cleanup_lines(row):
            say(line)


def cleanup_lines(row: Row) -> list[str]:
    times = []
    if row.up:
        times.append(f"down {row.up.down_s:.1f} s")
    if row.baseline:
        times.append(f"baseline cleanup {row.baseline.cleanup_s:.1f} s")
    return [f"{row.config}: " + ", ".join(times)] if times else []


def verdict(rows: Sequence[Row]) -> int:
    misses = [row for row in rows if row.ratio is not None and row.ratio > TARGET_RATIO]
    for row in misses:
        extras = [(label, up - base) for label, up, base in extra_times(row) if up is not None and base is not None]
        said = ", ".join(f"{label} {extra:+.1f} s" for label, extra in sorted(extras, key=lambda e: -e[1]))
        say(f"MISS {row.config}: up/baseline = {row.ratio:.2f} > {TARGET_RATIO}; extra time: {said}")
    if any(row.error for row in rows):
        return 2
    return 1 if misses else 0


# --- main -----------------------------------------------------------------------------


def measure_config(hosts: int, nodes: int, only: Optional[str]) -> Row:
    row = Row(hosts, nodes)
    tag = f"{hosts}x{nodes}"
    try:
        if only in (None, "up"):
            wait_until_quiet(f"up {tag}")
            say(f"[up {tag}] astrostack up bench-lc-{tag}")
            row.up = measure_up(bench_spec(f"bench-lc-{tag}", hosts, nodes, UP_CIDR))
            say(f"[up {tag}] total {row.up.total:.1f} s, down {row.up.down_s:.1f} s")
        if only in (None, "baseline"):
            wait_until_quiet(f"baseline {tag}")
            say(f"[baseline {tag}] the same by hand (bench-lc-base-{tag})")
            row.baseline = measure_baseline(bench_spec(f"bench-lc-base-{tag}", hosts, nodes, BASELINE_CIDR))
            say(f"[baseline {tag}] total {row.baseline.total:.1f} s "
                + " ".join(f"{k}={v:.1f}" for k, v in row.baseline.phases.items()))
    except MEASUREMENT_ERRORS as exc:
        row.error = f"{exc.__class__.__name__}: {exc}"
        say(f"[{tag}] FAILED: {row.error}")
    return row


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so every finally cleans up on SIGTERM too


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", type=parse_config, metavar="HOSTSxNODES",
                        help=f"a configuration to measure (repeatable); default: {' '.join(DEFAULT_CONFIGS)}")
    parser.add_argument("--only", choices=("up", "baseline"), help="measure one side only (no ratio)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    configs = args.config or [parse_config(text) for text in DEFAULT_CONFIGS]
    rows = [measure_config(hosts, nodes, args.only) for hosts, nodes in configs]
    print_report(rows)
    return verdict(rows)


if __name__ == "__main__":
    sys.exit(main())
