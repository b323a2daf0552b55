"""Container "VMs" for the local cloud: boot, inspect and delete them.

A VM is a container of ``astrostack/vm:latest`` whose entrypoint boots like a
cloud image: it runs the real cloud-init on a NoCloud seed. This module is
used by astrostack itself AND by the Heat resource plugin, which runs inside
Heat's own virtualenv where astrostack is not installed and loads this file
by path. So it imports only the standard library and the Docker SDK, and its
errors are plain :class:`VMError` (a RuntimeError) that astrostack callers
translate into ``LocalCloudError``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import docker
import docker.errors

LOG = logging.getLogger(__name__)

VM_IMAGE = "astrostack/vm:latest"
SEED_DIR = "/var/lib/cloud/seed/nocloud"
OUTPUT_LOG = "/var/log/cloud-init-output.log"
STATUS_JSON = "/var/lib/cloud/data/status.json"
RESULT_JSON = "/var/lib/cloud/data/result.json"
LABEL_VM = "astrostack.local.vm"            # the VM's name, on container and volume
LABEL_CONTAINER = "astrostack.local.container"  # the container name, on its volumes
CLOUD_INIT_STAGES = ("init-local", "init", "modules-config", "modules-final")
POLL_S = 1.0
DOCKER_TIMEOUT_S = 60

# What Docker-in-Docker needs here; --privileged fails (no CAP_SYS_RESOURCE).
CAP_ADD = ["ALL"]
CAP_DROP = ["SYS_RESOURCE"]
SECURITY_OPT = ["seccomp=unconfined"]
# The CLI's `--security-opt systempaths=unconfined` is client-side sugar for this:
UNMASKED_SYSTEM_PATHS = {"MaskedPaths": [], "ReadonlyPaths": []}
DEVICE_CGROUP_RULES = ["c *:* rmw", "b *:* rmw"]


class VMError(RuntimeError):
    """Any failure of the container-VM runtime (one line)."""


class VMEngineUnavailable(VMError):
    """No Docker engine answers."""


class VMImageMissing(VMError):
    """The VM image has not been built."""


class VMNotFound(VMError):
    """No container with that id or name."""


class VMBootFailed(VMError):
    """The container could not start or stopped while booting."""


class VMCloudInitFailed(VMError):
    """cloud-init reported errors."""


class VMWaitTimeout(VMError):
    """A wait on a VM reached its deadline."""


@dataclass(frozen=True)
class VMState:
    """A VM as the Docker engine sees it."""

    status: str                      # running, exited, created, restarting, missing...
    exit_code: Optional[int] = None
    error: str = ""                  # the engine's error when it could not start it
    ip_addresses: dict = field(default_factory=dict)  # docker network -> IPv4

    @property
    def running(self) -> bool:
        return self.status == "running"


@dataclass(frozen=True)
class CloudInitStatus:
    """cloud-init's own view, read from its status.json and result.json."""

    status: str                      # not-run, running, done, error
    errors: tuple = ()
    stages_finished: tuple = ()
    datasource: str = ""


_CLIENT: Optional[docker.DockerClient] = None


def client() -> docker.DockerClient:
    """A Docker SDK client (one per process) that has answered a ping."""
    global _CLIENT
    if _CLIENT is None:
        try:
            docker_client = docker.from_env(timeout=DOCKER_TIMEOUT_S)
            docker_client.ping()
        except docker.errors.DockerException as exc:
            raise VMEngineUnavailable(f"no Docker engine answers: {exc}") from exc
        _CLIENT = docker_client
    return _CLIENT


def boot_vm(name: str, user_data: str, meta_data: dict, network: str, ip: Optional[str] = None,
            labels: Optional[dict] = None, shared_dirs: Sequence[tuple[str, str]] = (), *,
            hostname: Optional[str] = None, env: Optional[dict] = None, mac: Optional[str] = None,
            extra_networks: Sequence[tuple[str, Optional[str]]] = (),
            image: str = VM_IMAGE) -> str:
    """Create and start a VM container; return its id.

    ``name`` is the container name (and the hostname unless ``hostname`` is
    given). The NoCloud seed is copied in before the container starts, so
    the entrypoint's cloud-init sees it on first boot. ``/var/lib/docker`` is
    a named volume labelled like the container; ``shared_dirs`` are host
    directories bind-mounted read-write; ``env`` reaches the entrypoint (fault
    injection). ``mac`` is the MAC on ``network``; ``extra_networks`` are
    further ``(network, ip)`` attachments. Returns as soon as the container
    runs: like Nova, it does not wait for cloud-init.
    """
    docker_client = client()
    _require_image(docker_client, image)
    _require_free_name(docker_client, name)
    all_labels = {**(labels or {}), LABEL_VM: hostname or name}
    volume = _fresh_volume(docker_client, f"{name}-var-lib-docker",
                           {**all_labels, LABEL_CONTAINER: name})
    container_id = _create_container(docker_client, name, hostname or name, network, ip, mac,
                                     all_labels, volume, shared_dirs, env or {}, image)
    try:
        for extra_network, extra_ip in extra_networks:
            docker_client.api.connect_container_to_network(
                container_id, extra_network, ipv4_address=extra_ip, aliases=[hostname or name])
        _put_seed(docker_client, container_id, user_data, _meta_data(meta_data, hostname or name))
        docker_client.api.start(container_id)
    except docker.errors.APIError as exc:
        delete_vm(container_id)
        raise VMBootFailed(f"VM {name} did not start: {_explain(exc)}") from exc
    return container_id


def _require_image(docker_client: docker.DockerClient, image: str) -> None:
    """Fail early, with the fix, when the VM image is not built."""
    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound as exc:
        raise VMImageMissing(f"image {image} is missing; build it with "
                             f"astrostack.images.build('vm')") from exc


def _require_free_name(docker_client: docker.DockerClient, name: str) -> None:
    """Refuse to boot over an existing container of the same name."""
    try:
        existing = docker_client.containers.get(name)
    except docker.errors.NotFound:
        return
    raise VMBootFailed(f"a container named {name} already exists ({existing.short_id}, "
                       f"{existing.status}); delete it first")


def _fresh_volume(docker_client: docker.DockerClient, volume_name: str, labels: dict) -> str:
    """A new named volume; a stale one of the same name (old swarm state) is removed."""
    try:
        docker_client.volumes.get(volume_name).remove()
    except docker.errors.NotFound:
        LOG.debug("no stale volume %s", volume_name)
    except docker.errors.APIError as exc:
        raise VMBootFailed(f"stale volume {volume_name} cannot be removed: {_explain(exc)}") from exc
    docker_client.volumes.create(name=volume_name, labels=labels)
    return volume_name


def _create_container(docker_client: docker.DockerClient, name: str, hostname: str,
                      network: str, ip: Optional[str], mac: Optional[str], labels: dict, volume: str,
                      shared_dirs: Sequence[tuple[str, str]], env: dict, image: str) -> str:
    """Create (not start) the container with the Docker-in-Docker settings."""
    api = docker_client.api
    binds = {volume: {"bind": "/var/lib/docker", "mode": "rw"}}
    for host_path, vm_path in shared_dirs:
        Path(host_path).mkdir(parents=True, exist_ok=True)
        binds[str(host_path)] = {"bind": vm_path, "mode": "rw"}
    host_config = api.create_host_config(
        binds=binds, cap_add=CAP_ADD, cap_drop=CAP_DROP, security_opt=SECURITY_OPT,
        device_cgroup_rules=DEVICE_CGROUP_RULES, cgroupns="private", init=True,
        network_mode=network)
    host_config.update(UNMASKED_SYSTEM_PATHS)
    networking = api.create_networking_config(
        {network: api.create_endpoint_config(ipv4_address=ip, aliases=[hostname])})
    try:
        created = api.create_container(image, name=name, hostname=hostname, labels=labels,
                                       environment=env, host_config=host_config, mac_address=mac,
                                       networking_config=networking, detach=True)
    except docker.errors.APIError as exc:
        _remove_volume(docker_client, volume)
        raise VMBootFailed(f"VM {name} cannot be created on network {network}"
                           f"{' at ' + ip if ip else ''}: {_explain(exc)}") from exc
    return created["Id"]


def _meta_data(meta_data: dict, hostname: str) -> dict:
    """NoCloud meta-data with the keys cloud-init needs."""
    return {"instance-id": hostname, "local-hostname": hostname, **(meta_data or {})}


def _put_seed(docker_client: docker.DockerClient, container_id: str, user_data: str,
              meta_data: dict) -> None:
    """Copy the NoCloud seed (meta-data is JSON, which is YAML) into the container."""
    files = {"user-data": user_data.encode(), "meta-data": json.dumps(meta_data).encode()}
    docker_client.api.put_archive(container_id, SEED_DIR, _tar(files))


def _tar(files: dict[str, bytes]) -> bytes:
    """A tar archive holding ``{name: content}`` as root-owned 0600 files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def vm_state(container_id: str) -> VMState:
    """running / exited (with exit code) / ... / missing."""
    try:
        attrs = client().api.inspect_container(container_id)
    except docker.errors.NotFound:
        return VMState("missing")
    state = attrs["State"]
    networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
    return VMState(status=state["Status"],
                   exit_code=None if state["Status"] == "running" else state.get("ExitCode"),
                   error=state.get("Error", ""),
                   ip_addresses={net: info.get("IPAddress", "") for net, info in networks.items()})


def read_file(container_id: str, path: str) -> Optional[bytes]:
    """A file's content from a running or stopped container; None if absent."""
    try:
        stream, _ = client().api.get_archive(container_id, path)
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        extracted = tar.extractfile(member) if member is not None else None
        return extracted.read() if extracted is not None else None


def cloud_init_status(container_id: str) -> CloudInitStatus:
    """cloud-init's status from its status.json / result.json (no exec needed)."""
    _require_container(container_id)
    status = _load_json(read_file(container_id, STATUS_JSON))
    result = _load_json(read_file(container_id, RESULT_JSON))
    return parse_cloud_init_status(status, result)


def parse_cloud_init_status(status: Optional[dict], result: Optional[dict]) -> CloudInitStatus:
    """What ``cloud-init status --long`` would say, from the two JSON files."""
    v1 = (status or {}).get("v1", {})
    finished = tuple(stage for stage in CLOUD_INIT_STAGES
                     if (v1.get(stage) or {}).get("finished"))
    errors = [error for stage in CLOUD_INIT_STAGES for error in (v1.get(stage) or {}).get("errors", [])]
    datasource = v1.get("datasource") or ""
    if result is not None:
        errors = errors or list(result.get("v1", {}).get("errors", []))
        return CloudInitStatus("error" if errors else "done", tuple(errors), finished, datasource)
    if status is None:
        return CloudInitStatus("not-run")
    return CloudInitStatus("error" if errors else "running", tuple(errors), finished, datasource)


def _load_json(content: Optional[bytes]) -> Optional[dict]:
    """Parsed JSON, or None when the file is absent or half-written."""
    if content is None:
        return None
    try:
        return json.loads(content)
    except json.JSONDecodeError:
        return None


def console_log(container_id: str, tail: int = 200) -> str:
    """The VM's "console": cloud-init-output.log, then the container log's tail."""
    _require_container(container_id)
    output = read_file(container_id, OUTPUT_LOG) or b"(no cloud-init-output.log)\n"
    logs = client().api.logs(container_id, stdout=True, stderr=True, tail=tail)
    return (f"==> {OUTPUT_LOG} <==\n{output.decode(errors='replace')}"
            f"==> container log (last {tail} lines) <==\n{logs.decode(errors='replace')}")


def log_tail(container_id: str, lines: int = 10) -> str:
    """The last lines of the container log (the entrypoint and cloud-init output), one line."""
    _require_container(container_id)
    logs = client().api.logs(container_id, stdout=True, stderr=True, tail=lines * 3)
    kept = [line.strip() for line in logs.decode(errors="replace").splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(empty console)"


def _require_container(container_id: str) -> None:
    """VMNotFound unless the container exists."""
    if vm_state(container_id).status == "missing":
        raise VMNotFound(f"no VM container {container_id}")


def vm_exec(container_id: str, command: Sequence[str] | str, timeout_s: float = 120) -> tuple[int, str]:
    """Run a command in a running VM; return (exit code, combined output).

    The timeout is enforced inside the VM with coreutils ``timeout``.
    """
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        exit_code, output = client().containers.get(container_id).exec_run(
            ["timeout", str(int(timeout_s))] + argv, demux=False)
    except docker.errors.NotFound as exc:
        raise VMNotFound(f"no VM container {container_id}") from exc
    except docker.errors.APIError as exc:  # 409: the VM is stopped
        raise VMError(f"cannot run a command in VM {container_id[:12]}: {_explain(exc)}") from exc
    return exit_code, (output or b"").decode(errors="replace")


def wait_running(container_id: str, deadline_s: float = 30, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> VMState:
    """Wait until the container runs; VMBootFailed if it exits or vanishes."""
    deadline = clock() + deadline_s
    while True:
        state = vm_state(container_id)
        if state.running:
            return state
        _fail_if_dead(container_id, state)
        if clock() >= deadline:
            raise VMWaitTimeout(f"VM {container_id[:12]} not running after {deadline_s:g} s "
                                f"(state {state.status})")
        sleep(POLL_S)


def wait_cloud_init(container_id: str, deadline_s: float = 120, *,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> CloudInitStatus:
    """Wait until cloud-init is done; fail on its errors or the container's death."""
    deadline = clock() + deadline_s
    while True:
        status = cloud_init_status(container_id)
        if status.status == "done":
            return status
        if status.status == "error":
            raise VMCloudInitFailed(f"cloud-init failed in VM {container_id[:12]}: "
                                    f"{'; '.join(map(str, status.errors))[:300]} | "
                                    f"{log_tail(container_id)}")
        _fail_if_dead(container_id, vm_state(container_id))
        if clock() >= deadline:
            raise VMWaitTimeout(f"cloud-init in VM {container_id[:12]} not done after "
                                f"{deadline_s:g} s (status {status.status}): {log_tail(container_id)}")
        sleep(POLL_S)


def _fail_if_dead(container_id: str, state: VMState) -> None:
    """Raise when the container is gone or stopped (a VM that shut down)."""
    if state.status == "missing":
        raise VMNotFound(f"VM container {container_id[:12]} disappeared")
    if state.status in ("exited", "dead"):
        raise VMBootFailed(f"VM {container_id[:12]} stopped (exit code {state.exit_code}"
                           f"{', ' + state.error if state.error else ''}): {log_tail(container_id)}")


def delete_vm(container_id: str) -> bool:
    """Remove the container and its volumes; False if there was nothing to remove."""
    docker_client = client()
    try:
        attrs = docker_client.api.inspect_container(container_id)
    except docker.errors.NotFound:
        return _remove_labelled_volumes(docker_client, container_id)
    volumes = [mount["Name"] for mount in attrs.get("Mounts", []) if mount.get("Type") == "volume"]
    with contextlib.suppress(docker.errors.NotFound):  # removed concurrently: same outcome
        docker_client.api.remove_container(attrs["Id"], force=True, v=True)
    for volume in volumes:
        _remove_volume(docker_client, volume)
    _remove_labelled_volumes(docker_client, attrs["Name"].lstrip("/"))
    return True


def _remove_labelled_volumes(docker_client: docker.DockerClient, container_name: str) -> bool:
    """Remove volumes left by a container of that name; True if any was removed."""
    stale = docker_client.volumes.list(filters={"label": f"{LABEL_CONTAINER}={container_name}"})
    for volume in stale:
        _remove_volume(docker_client, volume.name)
    return bool(stale)


def _remove_volume(docker_client: docker.DockerClient, volume_name: str) -> None:
    """Remove a volume; a missing one is already gone."""
    try:
        docker_client.api.remove_volume(volume_name, force=True)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        raise VMError(f"volume {volume_name} cannot be removed: {_explain(exc)}") from exc


def list_vms(label_filters: Optional[dict] = None) -> list[str]:
    """Ids of VM containers (running or not) whose labels match ``label_filters``."""
    filters = [LABEL_VM] + [f"{key}={value}" for key, value in (label_filters or {}).items()]
    return [c["Id"] for c in client().api.containers(all=True, filters={"label": filters})]


def _explain(exc: docker.errors.APIError) -> str:
    """The engine's own explanation, on one line."""
    return str(getattr(exc, "explanation", None) or exc).replace("\n", " ")
