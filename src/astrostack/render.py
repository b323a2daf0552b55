"""Spec -> files Heat accepts: `cluster.yaml`, `environment.yaml`, `lib/`,
and one cloud-config per role under `user-data/`.

The HOT templates are copied as they are (real-cloud templates); the spec
reaches Heat only through `environment.yaml`'s parameters and the rendered
user-data, so `openstack stack create -t DIR/cluster.yaml -e
DIR/environment.yaml NAME` works on what this writes.

A render never overwrites a file it did not write: it keeps a manifest of
what it wrote (``.astrostack-render.json``: each file's SHA-256) and, before
writing anything, refuses (naming the file) if a file it would write is there
and is neither as a render left it nor identical to the new content. Files are
replaced through a temporary file, so a link in the folder is replaced, never
followed. Rendering makes no key: the public key is a parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from astrostack import __version__, marks, paths
from astrostack.errors import InvalidInput, TemplateError, show_path
from astrostack.spec import ClusterSpec, Mode

ROLES = ("nfs", "manager", "worker")
MANIFEST = ".astrostack-render.json"
MANIFEST_WRITER = "astrostack render"
HEAT_PLACEHOLDERS = (
    "__ASTROSTACK_SIGNAL_URL__",
    "__ASTROSTACK_SIGNAL_TOKEN__",
    "__ASTROSTACK_SECRET__",
    "__ASTROSTACK_NFS_IP__",
    "__ASTROSTACK_MANAGER_IP__",
    "__ASTROSTACK_VOLUME_ID__",
    "__ASTROSTACK_HOST_ID__",
)

# What each role installs (when the image lacks it) and runs.
ROLE_PACKAGES = {
    "nfs": ["nfs-kernel-server", "docker-registry", "curl", "openssl", "python3"],
    "manager": ["docker.io", "nfs-common", "curl", "openssl", "openssh-client", "python3"],
    "worker": ["docker.io", "nfs-common", "curl", "openssl", "python3"],
}
ROLE_SCRIPTS = {
    "nfs": [("nfs.sh", "/usr/local/sbin/astrostack-nfs")],
    "manager": [
        ("manager.sh", "/usr/local/sbin/astrostack-manager"),
        ("nodes.sh", "/usr/local/sbin/astrostack-nodes"),
    ],
    "worker": [
        ("worker.sh", "/usr/local/sbin/astrostack-worker"),
        ("nodes.sh", "/usr/local/sbin/astrostack-nodes"),
    ],
}
# A task queue's hosts start Dask and Redis (taskqueue.sh) where an MPI
# cluster's start their MPI containers (nodes.sh): the same step, astrostack-nodes.
TASK_QUEUE_SCRIPTS = {
    "nfs": ROLE_SCRIPTS["nfs"],
    "manager": [("manager.sh", "/usr/local/sbin/astrostack-manager"),
                ("taskqueue.sh", "/usr/local/sbin/astrostack-nodes")],
    "worker": [("worker.sh", "/usr/local/sbin/astrostack-worker"),
               ("taskqueue.sh", "/usr/local/sbin/astrostack-nodes")],
}
# The ports of a task queue (heat_templates/cluster.yaml opens them).
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
REDIS_PORT = 6379
DASK_PORTS = "40000:40499"  # the workers' (the nannies' follow: 40500:40999)
NANNY_PORTS = "40500:40999"

# The value each role's HOST_ID takes; workers get theirs from the ResourceGroup.
ROLE_HOST_ID = {"nfs": "nfs", "manager": "manager", "worker": "__ASTROSTACK_HOST_ID__"}


@dataclass(frozen=True)
class Rendered:
    """Where a render went and what it holds."""

    directory: Path
    template: Path
    environment: Path
    user_data: dict[str, Path]
    written: tuple[Path, ...] = ()

    def files(self) -> list[Path]:
        """The files the render wrote (the manifest aside)."""
        if self.written:
            return sorted(self.written)
        return sorted(p for p in self.directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.cloud_init_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


def _scripts() -> dict[str, str]:
    folder = paths.cloud_init_dir() / "scripts"
    return {p.name: p.read_text().rstrip("\n") for p in sorted(folder.glob("*.sh"))}


# Linux's defaults for the IPv4 neighbour (ARP) table: no garbage collection
# below gc_thresh1, collection after 5 s above gc_thresh2, never above gc_thresh3.
NEIGH_DEFAULTS = (128, 512, 1024)
# What a host needs besides its containers' peers (its own interfaces, bridges).
NEIGH_HOST_ENTRIES = 256


def neighbour_table(spec: ClusterSpec) -> tuple[int, int, int]:
    """gc_thresh1-3 of a host's IPv4 neighbour table for this cluster.

    The table is one per kernel, shared by every network namespace: each
    container on the overlay keeps an entry per peer it talks to (an MPI job
    may talk to all of them), and the overlay's own namespace one per
    container. At 10 hosts x 200 nodes Linux's 1024 overflowed ("neighbour
    table overflow"): new peers' packets were dropped, and MPI connections
    hung in SYN-SENT. Sized for twice the fair share of containers per host
    (tasks moved off a host land on the others), each talking to every node.
    """
    per_host = 1 if (spec.mode is Mode.mpi and not spec.is_task_queue) else 2 * max(spec.ranks_per_host())
    entries = per_host * spec.nodes + spec.nodes + NEIGH_HOST_ENTRIES
    low, soft, hard = NEIGH_DEFAULTS
    return low, max(soft, entries), max(hard, 2 * entries)


def host_env(spec: ClusterSpec, role: str) -> dict[str, Any]:
    """Settings every host script reads from /etc/astrostack/cluster.env."""
    env: dict[str, Any] = {
        "CLUSTER": spec.name,
        "ROLE": role,
        "HOST_ID": ROLE_HOST_ID[role],
        "MODE": spec.mode.value,
        "HOSTS": spec.hosts,
        "NODES": spec.nodes,
        "SLOTS": spec.application.slots_per_node,
        "MOUNT_POINT": spec.nfs.mount_point,
        "EXPORT_PATH": spec.nfs.export_path,
        "PRIVATE_CIDR": spec.network.cidr,
        "NFS_IP": "__ASTROSTACK_NFS_IP__" if role != "nfs" else "",
        "MANAGER_IP": "__ASTROSTACK_MANAGER_IP__" if role != "nfs" else "",
        "VOLUME_ID": "__ASTROSTACK_VOLUME_ID__" if role == "nfs" else "",
        "OVERLAY_NAME": spec.overlay.name,
        "OVERLAY_SUBNET": spec.overlay.subnet,
        "OVERLAY_ENCRYPTED": str(spec.overlay.encrypted).lower(),
        "REGISTRY": spec.registry.url or "",
        "REGISTRY_INSECURE": str(spec.registry.insecure).lower(),
        "APP_IMAGE": spec.application.image,
        "NODES_TIMEOUT": spec.timeouts.nodes_ready,
        "PACKAGES": " ".join(ROLE_PACKAGES[role]),
        "INSTALL_PACKAGES": str(spec.servers.install_packages).lower(),
        "NEIGH_GC_THRESH": " ".join(str(n) for n in neighbour_table(spec)),
    }
    env.update(task_queue_env(spec))
    for fault in spec.faults:
        env[f"FAULT_{fault.host.replace('-', '_')}"] = fault.fault
    return env


def task_queue_env(spec: ClusterSpec) -> dict[str, Any]:
    """KIND, and a task queue's settings for taskqueue.sh (none for an MPI cluster)."""
    if not spec.is_task_queue:
        return {"KIND": spec.kind.value}
    queue = spec.queue
    return {
        "KIND": spec.kind.value,
        "TQ_PROCESSES": queue.processes,
        "TQ_THREADS": queue.threads,
        "TQ_REDIS": queue.redis.value,
        "TQ_DASHBOARD": str(queue.dashboard).lower(),
        "TQ_SCHEDULER_PORT": SCHEDULER_PORT,
        "TQ_DASHBOARD_PORT": DASHBOARD_PORT,
        "TQ_REDIS_PORT": REDIS_PORT,
        "TQ_WORKER_PORTS": DASK_PORTS,
        "TQ_NANNY_PORTS": NANNY_PORTS,
    }


def render_user_data(spec: ClusterSpec, role: str, env: jinja2.Environment | None = None) -> str:
    """One role's #cloud-config, with Heat's placeholders still in it."""
    env = env or _jinja_env()
    scripts = _scripts()
    try:
        text = env.get_template("host.yaml.j2").render(
            spec=spec,
            role=role,
            version=__version__,
            env=host_env(spec, role),
            scripts=scripts,
            role_scripts=(TASK_QUEUE_SCRIPTS if spec.is_task_queue else ROLE_SCRIPTS)[role],
        )
    except jinja2.TemplateError as exc:
        raise TemplateError(f"cloud_init/host.yaml.j2 ({role}): {exc}") from None
    _check_cloud_config(text, role)
    return text


def _check_cloud_config(text: str, role: str) -> None:
    if not text.startswith("#cloud-config\n"):
        raise TemplateError(f"user-data for {role} does not start with #cloud-config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"user-data for {role} is not YAML: {exc}") from None
    if not isinstance(data, dict) or "write_files" not in data:
        raise TemplateError(f"user-data for {role} lacks write_files")


def stack_parameters(spec: ClusterSpec, ssh_public_key: str = "") -> dict[str, Any]:
    """The stack's parameters, as written to environment.yaml."""
    servers = spec.servers
    return {
        "cluster_name": spec.name,
        "cluster_mode": spec.mode.value,
        "cluster_kind": spec.kind.value,
        "cluster_tags": ",".join(cluster_tags(spec)),
        "worker_count": spec.workers,
        "manager_image": servers.manager.image or servers.image,
        "worker_image": servers.worker.image or servers.image,
        "nfs_image": servers.nfs.image or servers.image,
        "manager_flavor": servers.manager.flavor,
        "worker_flavor": servers.worker.flavor,
        "nfs_flavor": servers.nfs.flavor,
        "key_name": spec.ssh.keypair or "",
        "ssh_public_key": ssh_public_key if not spec.ssh.keypair else "",
        "external_network": spec.network.external,
        "private_cidr": spec.network.cidr,
        "dns_nameservers": ",".join(spec.network.dns_nameservers),
        "allowed_ssh_cidr": spec.ssh.allowed_cidr,
        "nfs_export_path": spec.nfs.export_path,
        "share_mount_point": spec.nfs.mount_point,
        "nfs_volume_size": spec.nfs.volume_size_gb,
        "hosts_timeout": spec.timeouts.hosts_ready,
        "nfs_timeout": spec.timeouts.hosts_ready,
    }


def cluster_tags(spec: ClusterSpec) -> list[str]:
    return [marks.cluster_tag(spec.name), marks.GENERIC_TAG, *spec.tags]


def stack_tags(spec: ClusterSpec) -> list[str]:
    return cluster_tags(spec)


def environment(spec: ClusterSpec, ssh_public_key: str = "") -> dict[str, Any]:
    """The same for every cloud: parameters and the nested worker template."""
    return {
        "parameters": stack_parameters(spec, ssh_public_key),
        "resource_registry": {"Astrostack::Worker": "lib/worker.yaml"},
    }


def render(spec: ClusterSpec, out_dir: str | Path, ssh_public_key: str = "") -> Rendered:
    """Write everything `openstack stack create -t -e` needs into OUT_DIR."""
    out = Path(out_dir)
    files = rendered_files(spec, ssh_public_key)
    try:
        return _write_render(spec, out, files)
    except OSError as exc:
        raise InvalidInput(f"{show_path(out)}: cannot write the render there ({exc.strerror or exc})") from None


def rendered_files(spec: ClusterSpec, ssh_public_key: str = "") -> dict[str, bytes]:
    """Every file of the render, by its path relative to the output folder."""
    source = paths.heat_templates_dir()
    files = {"cluster.yaml": (source / "cluster.yaml").read_bytes()}
    for nested in sorted((source / "lib").glob("*.yaml")):
        files[f"lib/{nested.name}"] = nested.read_bytes()
    jinja_env = _jinja_env()
    for role in ROLES:
        files[f"user-data/{role}.yaml"] = render_user_data(spec, role, jinja_env).encode()
    files["environment.yaml"] = _environment_text(spec, ssh_public_key).encode()
    return files


def _write_render(spec: ClusterSpec, out: Path, files: dict[str, bytes]) -> Rendered:
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{show_path(out)}: exists and is not a directory")
    previous = read_manifest(out)
    _refuse_foreign_files(out, files, previous)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for relative, content in files.items():
        target = out / relative
        target.parent.mkdir(exist_ok=True)
        _write_file(target, content)
        written.append(target)
    _remove_stale(out, previous, files)
    _write_file(out / MANIFEST, _manifest_text(spec, files))
    user_data = {role: out / "user-data" / f"{role}.yaml" for role in ROLES}
    return Rendered(out, out / "cluster.yaml", out / "environment.yaml", user_data, tuple(written))


def read_manifest(out: Path) -> dict[str, str]:
    """relative path -> SHA-256 of what the last render into OUT wrote ({} without a manifest)."""
    manifest = out / MANIFEST
    if not os.path.lexists(manifest):
        return {}
    try:
        data = json.loads(manifest.read_text()) if manifest.is_file() and not manifest.is_symlink() else None
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    files = data.get("files") if isinstance(data, dict) and data.get("written_by") == MANIFEST_WRITER else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise InvalidInput(f"{show_path(manifest)}: is not a manifest astrostack render wrote; not touching "
                           f"{show_path(out)}", hint="render into another folder")
    return files


def _refuse_foreign_files(out: Path, files: dict[str, bytes], previous: dict[str, str]) -> None:
    foreign = [out / relative for relative, content in files.items()
               if not _ours(out, relative, content, previous)]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise InvalidInput(f"{show_path(foreign[0])}: exists and was not written by astrostack render (or was "
                           f"changed since); not overwriting it{more}",
                           hint="render into another folder, e.g. -o stack/")


def _ours(out: Path, relative: str, content: bytes, previous: dict[str, str]) -> bool:
    """True if writing CONTENT at OUT/RELATIVE loses nothing: no file there, or ours, or the same bytes."""
    folder = out / relative.rpartition("/")[0] if "/" in relative else out
    if folder != out and os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
        return False
    target = out / relative
    if not os.path.lexists(target):
        return True
    if target.is_symlink() or not target.is_file():
        return False
    current = target.read_bytes()
    return current == content or previous.get(relative) == _sha256(current)


def _remove_stale(out: Path, previous: dict[str, str], files: dict[str, bytes]) -> None:
    """Files the last render wrote that this one does not, if still as written."""
    for relative, digest in previous.items():
        target = out / relative
        if relative in files or ".." in Path(relative).parts or target.is_symlink() or not target.is_file():
            continue
        if _sha256(target.read_bytes()) == digest:
            target.unlink()


def _write_file(target: Path, content: bytes) -> None:
    """CONTENT at TARGET through a temporary file in the same folder (never through a link at TARGET)."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _manifest_text(spec: ClusterSpec, files: dict[str, bytes]) -> bytes:
    manifest = {
        "written_by": MANIFEST_WRITER,
        "version": __version__,
        "cluster": spec.name,
        "spec_hash": spec.spec_hash(),
        "files": {relative: _sha256(content) for relative, content in sorted(files.items())},
    }
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _environment_text(spec: ClusterSpec, ssh_public_key: str) -> str:
    header = (
        f"# Heat environment of astrostack cluster {spec.name!r} (spec hash {spec.spec_hash()}).\n"
        f"# Use: openstack stack create -t cluster.yaml -e environment.yaml {spec.name}\n"
    )
    if not spec.ssh.keypair and not ssh_public_key:
        header += ("# No SSH key: set ssh_public_key below to your public key (one line), or ssh.keypair\n"
                   "# in the spec; as it is, the servers get no key to log in with.\n")
    body = yaml.safe_dump(environment(spec, ssh_public_key), sort_keys=False, default_flow_style=False)
    return header + body
