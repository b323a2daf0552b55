"""The container that is a server: how it is created, and what Docker says of it.

A server is a container ``nova-<uuid>`` of the VM image, run as a machine:
systemd as PID 1 behind the image's boot shim, the capability set that
Docker-in-Docker needs here (``--privileged`` fails on this kernel: no
CAP_SYS_RESOURCE in the bounding set), a private cgroup namespace, tmpfs on
/run, a Docker volume on /var/lib/docker, a tty as its console, no network of
Docker's (the hypervisor plugs the VIFs), the hypervisor channel's directory
on /run/astrostack-hv. Every Docker call has a timeout; errors are one line.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from astrostack_localcloud import naming

from .errors import HypervisorError, Missing

CAP_ADD = ["ALL"]
CAP_DROP = ["SYS_RESOURCE"]
SECURITY_OPT = ["seccomp=unconfined"]
DEVICE_CGROUP_RULES = ["c *:* rmw", "b *:* rmw"]
# `--security-opt systempaths=unconfined` of the CLI is these two host-config fields.
UNMASKED_SYSTEM_PATHS = {"MaskedPaths": [], "ReadonlyPaths": []}
TMPFS = {"/run": "rw,nosuid,nodev,mode=755", "/run/lock": "rw,nosuid,nodev,noexec,mode=1777"}
STOP_SIGNAL = "SIGRTMIN+3"          # systemd's "halt": a clean shutdown
GUEST_DOCKER_DIR = "/var/lib/docker"
GUEST_CHANNEL_DIR = "/run/astrostack-hv"
CONSOLE_LOG = {"type": "json-file", "config": {"max-size": "10m", "max-file": "2"}}
NIC_COUNT_ENV = "ASTROSTACK_HV_NICS"
NIC_WAIT_ENV = "ASTROSTACK_HV_NIC_WAIT_S"
# cloud-init's OpenStack detection reads PID 1's environment when there is no DMI.
PLATFORM_ENV = {"product_name": "OpenStack Nova"}
# What a guest's poweroff and reboot look like from outside: its init killed by
# SIGINT (halt, poweroff) or SIGHUP (reboot), see reboot(2) in a PID namespace.
EXIT_GUEST_REBOOT = 128 + 1


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the container of one server is created from."""

    instance_uuid: str
    instance_name: str
    hostname: str
    image: str
    nic_count: int
    channel_dir: Path
    hypervisor: str = ""               # LABEL_HYPERVISOR: which hypervisor's server this is
    memory_mb: int = 0                 # 0: no limit
    nic_wait_s: float = 120.0
    stop_timeout_s: float = 30.0

    @property
    def name(self) -> str:
        return naming.instance_container(self.instance_uuid)

    @property
    def volume(self) -> str:
        return naming.instance_docker_volume(self.instance_uuid)

    @property
    def labels(self) -> dict[str, str]:
        return {naming.LABEL_INSTANCE: self.instance_uuid, naming.LABEL_INSTANCE_NAME: self.instance_name,
                naming.LABEL_HOSTNAME: self.hostname, naming.LABEL_HYPERVISOR: self.hypervisor}

    @property
    def environment(self) -> dict[str, str]:
        return {**PLATFORM_ENV, NIC_COUNT_ENV: str(self.nic_count), NIC_WAIT_ENV: str(int(self.nic_wait_s))}


def host_config_args(spec: ContainerSpec) -> dict:
    """Arguments of the Docker SDK's ``create_host_config`` for SPEC."""
    args = {
        "binds": {spec.volume: {"bind": GUEST_DOCKER_DIR, "mode": "rw"},
                  str(spec.channel_dir): {"bind": GUEST_CHANNEL_DIR, "mode": "rw"}},
        "cap_add": CAP_ADD, "cap_drop": CAP_DROP, "security_opt": SECURITY_OPT,
        "device_cgroup_rules": DEVICE_CGROUP_RULES, "cgroupns": "private", "tmpfs": TMPFS,
        "network_mode": "none", "init": False, "log_config": CONSOLE_LOG,
    }
    if spec.memory_mb:
        args["mem_limit"] = args["memswap_limit"] = f"{spec.memory_mb}m"
    return args


@dataclass(frozen=True)
class ContainerState:
    """A server's container as Docker sees it."""

    name: str
    status: str                 # created, running, paused, restarting, exited, dead
    pid: int = 0                # PID 1 of the guest, in this machine's PID namespace
    exit_code: int = 0
    error: str = ""

    @property
    def running(self) -> bool:
        return self.status == "running" and self.pid > 0


@dataclass
class Docker:
    """The Docker engine, as the hypervisor uses it (one client, every call bounded)."""

    timeout_s: float = 60.0
    _client: docker.DockerClient | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = docker.from_env(timeout=int(self.timeout_s))
                    self._client.ping()
                except docker.errors.DockerException as exc:
                    self._client = None
                    raise HypervisorError(f"no Docker engine answers: {explain(exc)}") from exc
            return self._client.api

    # --- volumes and containers --------------------------------------------------------

    def ensure_volume(self, name: str, labels: dict[str, str]) -> None:
        try:
            self._call(f"inspect volume {name}", self.api.inspect_volume, name)
        except Missing:
            self._call(f"create volume {name}", self.api.create_volume, name=name, labels=labels)

    def remove_volume(self, name: str) -> None:
        with contextlib.suppress(Missing):
            self._call(f"remove volume {name}", self.api.remove_volume, name, force=True)

    def create(self, spec: ContainerSpec) -> str:
        self.ensure_volume(spec.volume, spec.labels)
        host_config = self.api.create_host_config(**host_config_args(spec))
        host_config.update(UNMASKED_SYSTEM_PATHS)
        created = self._call(
            f"create container {spec.name}", self.api.create_container, spec.image, name=spec.name,
            hostname=spec.hostname, labels=spec.labels, environment=spec.environment, tty=True,
            stop_signal=STOP_SIGNAL, stop_timeout=int(spec.stop_timeout_s), host_config=host_config,
            detach=True)
        return created["Id"]

    def start(self, name: str) -> ContainerState:
        self._call(f"start container {name}", self.api.start, name)
        return self.require(name)

    def stop(self, name: str, timeout_s: float) -> None:
        """A clean shutdown (systemd's halt signal), SIGKILL after TIMEOUT_S."""
        self._call(f"stop container {name}", self.api.stop, name, timeout=int(timeout_s))

    def kill(self, name: str) -> None:
        with contextlib.suppress(docker.errors.APIError):  # 409: not running, which is the goal
            self.api.kill(name)

    def pause(self, name: str) -> None:
        self._call(f"pause container {name}", self.api.pause, name)

    def unpause(self, name: str) -> None:
        self._call(f"unpause container {name}", self.api.unpause, name)

    def remove(self, name: str) -> None:
        with contextlib.suppress(Missing):
            self._call(f"remove container {name}", self.api.remove_container, name, force=True, v=True)

    def inspect(self, name: str) -> ContainerState | None:
        try:
            attrs = self._call(f"inspect container {name}", self.api.inspect_container, name)
        except Missing:
            return None
        state = attrs["State"]
        return ContainerState(name=name, status=state["Status"], pid=int(state.get("Pid") or 0),
                              exit_code=int(state.get("ExitCode") or 0), error=state.get("Error") or "")

    def require(self, name: str) -> ContainerState:
        state = self.inspect(name)
        if state is None:
            raise Missing(f"container {name} does not exist")
        return state

    def instance_containers(self) -> list[dict]:
        """Every server container (any state), as Docker's list entries."""
        return self._call("list server containers", self.api.containers, all=True,
                          filters={"label": naming.LABEL_INSTANCE})

    def console(self, name: str, max_bytes: int) -> bytes:
        """The last MAX_BYTES of the container log (the guest's tty)."""
        output = self._call(f"read the console of {name}", self.api.logs, name, stdout=True, stderr=True,
                            tail=5000)
        return output[-max_bytes:]

    def events(self, since: float, until: float) -> Iterator[dict]:
        """Start and die events of server containers between two instants (a bounded call)."""
        return self._call("follow Docker events", self.api.events, since=f"{since:.9f}", until=f"{until:.9f}",
                          decode=True, filters={"type": "container", "event": ["start", "die"],
                                                "label": [naming.LABEL_INSTANCE]})

    # --- images ---------------------------------------------------------------------------

    def image_exists(self, reference: str) -> bool:
        try:
            self._call(f"inspect image {reference}", self.api.inspect_image, reference)
            return True
        except Missing:
            return False

    def references(self, repository: str) -> list[str]:
        """Every tag of REPOSITORY (repository:tag)."""
        entries = self._call(f"list images of {repository}", self.api.images, name=repository)
        return [tag for entry in entries for tag in entry.get("RepoTags") or () if tag.startswith(repository + ":")]

    def remove_image(self, reference: str) -> None:
        """Untag REFERENCE (its layers go when nothing else uses them)."""
        with contextlib.suppress(Missing):
            self._call(f"remove image {reference}", self.api.remove_image, reference)

    def load_image(self, archive: Path, reference: str) -> None:
        """``docker load`` an archive of one image and tag it REFERENCE."""
        with archive.open("rb") as data:
            loaded = self._call(f"docker load {archive.name}", self.api.load_image, data)
        image_ids = [self._loaded_id(line) for line in loaded or () if self._loaded_id(line)]
        if len(image_ids) != 1:
            raise HypervisorError(f"docker load of {archive.name} gave {len(image_ids)} images, wanted one")
        repository, tag = reference.rsplit(":", 1)
        self._call(f"tag {reference}", self.api.tag, image_ids[-1], repository, tag)

    def _loaded_id(self, line: dict) -> str:
        """The image id or reference that a ``docker load`` progress line announces."""
        stream = (line or {}).get("stream", "")
        for prefix in ("Loaded image ID: ", "Loaded image: "):
            if stream.startswith(prefix):
                return stream[len(prefix):].strip()
        return ""

    def _call(self, what: str, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except docker.errors.NotFound as exc:
            raise Missing(f"{what}: not found") from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise HypervisorError(f"{what}: {explain(exc)}") from exc


def explain(exc: Exception) -> str:
    """The engine's own explanation, on one line."""
    return " ".join(str(getattr(exc, "explanation", None) or exc).split())


def instance_uuid_of(entry: dict) -> str:
    return (entry.get("Labels") or {}).get(naming.LABEL_INSTANCE, "")


def hypervisor_of(entry: dict) -> str:
    return (entry.get("Labels") or {}).get(naming.LABEL_HYPERVISOR, "")
