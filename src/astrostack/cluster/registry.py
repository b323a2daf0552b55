"""The application image into a cluster's own registry.

Without ``registry.url``, the cluster runs a registry on its NFS server VM,
reachable only from the cluster's network. astrostack pushes the image there
once, from this machine's Docker engine, through an SSH tunnel to the
manager's floating IP (the one way in); the hosts then pull it from
``NFS_IP:5000``, and the manager creates the containers once it is there
(cloud_init/scripts/nodes.sh ``wait_for_image``).
"""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable

from astrostack import images
from astrostack.cluster.access import ClusterAccessError, SshAccess

CLUSTER_REGISTRY_PORT = 5000
TUNNEL_DEADLINE_S = 30.0
POLL_S = 0.2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port: int, tunnel: subprocess.Popen, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if tunnel.poll() is not None:
            error = (tunnel.stderr.read() if tunnel.stderr else b"").decode(errors="replace").strip()
            raise ClusterAccessError(f"the SSH tunnel to the cluster's registry ended: {error[-200:] or 'no message'}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(POLL_S)
    raise ClusterAccessError(f"the SSH tunnel to the cluster's registry did not open within {deadline_s:.0f} s")


def publish(image: str, manager: SshAccess, registry_address: str,
            note: Callable[[str], None] = lambda message: None) -> tuple[str, str]:
    """Push IMAGE into the registry at REGISTRY_ADDRESS (``NFS_IP``) behind MANAGER;
    return the reference the hosts pull and its digest."""
    port = _free_port()
    tunnel = subprocess.Popen(manager.tunnel_argv(port, f"{registry_address}:{CLUSTER_REGISTRY_PORT}"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, tunnel, TUNNEL_DEADLINE_S)
        note(f"pushing {image} into the cluster's registry ({registry_address}:{CLUSTER_REGISTRY_PORT}, "
             "through an SSH tunnel to the manager)")
        _, digest = images.push(image, f"127.0.0.1:{port}", progress=None, untag=True)
    finally:
        tunnel.terminate()
        try:
            tunnel.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tunnel.kill()
    repository, tag = images.split_reference(image)
    return f"{registry_address}:{CLUSTER_REGISTRY_PORT}/{repository}:{tag}", digest
