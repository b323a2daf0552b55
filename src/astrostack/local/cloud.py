"""The local cloud as `astrostack up` sees it: get it running, say openly
what it substitutes, stage the images, watch its container-VMs, clean up.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from astrostack import images, paths
from astrostack.errors import LocalCloudError
from astrostack.local import dockerd, engine, preflight
from astrostack.local import vm as vm_runtime

Note = Callable[[str], None]
LABEL_CLUSTER = "astrostack.cluster"
VM_IMAGE = "astrostack/vm:latest"


def shares_root() -> Path:
    """Host folder of every local cluster's shared directory (the NFS
    substitute); the Heat plugin receives it as ASTROSTACK_LOCAL_SHARES."""
    return paths.subdir("local") / "shares"


def share_dir(cluster: str) -> Path:
    return shares_root() / cluster


def ensure_running(note: Note = print) -> engine.EngineStatus:
    """Docker engine and local Heat engine up (started when they are not)."""
    dockerd.ensure_dockerd()
    current = engine.status()
    if current.running and current.answering:
        return current
    note("starting the local Heat engine (first start installs it: about a minute)")
    engine.install(progress=note)
    return engine.start()


def substitutes(spec: Any) -> list[str]:
    """One line per kernel feature a real VM has and this machine lacks."""
    lines = [f"{f.feature}: missing here; {f.substitute}" for f in preflight.run_preflight() if not f.available]
    if spec.overlay.encrypted:
        lines.append("overlay.encrypted: turned off on the local cloud (its kernel drops ESP traffic between hosts)")
    return lines


def prepare(spec: Any, record: Any, note: Note = print) -> None:
    """Everything `up` needs on this machine before the stack is created."""
    ensure_running(note)
    for line in substitutes(spec):
        note(f"local cloud: {line}")
    ensure_image(VM_IMAGE, "vm", note)
    record.image_digests[VM_IMAGE] = images.image_digest(VM_IMAGE)
    app = spec.application.image
    recipe = app.split("/", 1)[1].split(":", 1)[0] if app.startswith("astrostack/") else ""
    if recipe in images.recipes():
        ensure_image(app, recipe, note)
    if not images.image_exists(app):
        note(f"{app} is not on this machine: the hosts will pull it from {spec.registry.url or 'the cluster registry'}")
        return
    record.image_digests[app] = images.image_digest(app)
    stage_image(spec.name, app, note)


def ensure_image(tag: str, recipe: str, note: Note) -> None:
    if images.image_exists(tag):
        return
    note(f"building image {tag} (once)")
    images.ensure_base_image(progress=None)
    images.build(recipe, progress=None)


def stage_image(cluster: str, tag: str, note: Note) -> Path:
    """`docker save` the application image onto the cluster's share, where
    the manager loads it once and pushes it to the cluster registry."""
    folder = share_dir(cluster) / ".astrostack" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (tag.replace("/", "_").replace(":", "_") + ".tar")
    if target.exists():
        return target
    note(f"staging {tag} on the cluster's share")
    result = subprocess.run(["docker", "save", "-o", str(target), tag], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        raise LocalCloudError(f"docker save {tag} failed: {result.stderr.strip().splitlines()[-1:]}")
    return target


def cluster_vms(cluster: str) -> list[str]:
    return vm_runtime.list_vms({LABEL_CLUSTER: cluster})


class LocalServerWatch:
    """A container-VM that stopped is a server that died (one Docker call)."""

    def __init__(self, cluster: str):
        self.cluster = cluster

    def dead_servers(self) -> list[tuple[str, str]]:
        client = vm_runtime.client()
        dead = []
        for container in client.api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={self.cluster}"}):
            if container.get("State") in ("exited", "dead"):
                # The server's name as Nova shows it (the VM's hostname, e.g. CLUSTER-worker-0),
                # not the container's name, which Heat derives from the resource path.
                container_name = container["Names"][0].lstrip("/")
                name = (container.get("Labels") or {}).get(vm_runtime.LABEL_VM) or container_name
                status = container.get("Status", container.get("State"))
                dead.append((name, f"container VM {container_name} {status}"))
        return dead


def console_logs(cluster: str, conn: Any = None) -> dict[str, str]:
    logs = {}
    for container_id in cluster_vms(cluster):
        name = vm_runtime.client().api.inspect_container(container_id)["Name"].lstrip("/")
        try:
            logs[name] = vm_runtime.console_log(container_id)
            nodes_log = vm_runtime.read_file(container_id, "/var/log/astrostack-nodes.log")
            if nodes_log:
                logs[name] += "\n== /var/log/astrostack-nodes.log\n" + nodes_log.decode(errors="replace")
        except vm_runtime.VMError as exc:
            logs[name] = f"(console unavailable: {exc})"
    return logs


def remove_share(cluster: str) -> None:
    folder = share_dir(cluster)
    if folder.exists():
        shutil.rmtree(folder)
