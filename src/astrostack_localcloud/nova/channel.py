"""The hypervisor channel: one Unix socket per VM, through which its NFS substitute talks to the hypervisor.

``LOCAL/hv/<uuid>/hv.sock`` is bind-mounted (as its directory) at
``/run/astrostack-hv/hv.sock`` in that VM only, so the socket a request
arrives on is the caller's identity: a VM cannot speak for another. The
directory, not the file, is mounted so that a socket re-created by a restarted
nova-compute is the one the VM sees. A request is one JSON line, the answer
one JSON line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from pathlib import Path

LOG = logging.getLogger(__name__)
SOCKET_NAME = "hv.sock"
MAX_REQUEST_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 30.0

# handler(instance_uuid, request, peer_pid) -> answer; peer_pid is in this machine's PID namespace.
Handler = Callable[[str, dict, int], dict]


def peer_pid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[0]


def read_request(stream) -> dict:
    line = stream.readline(MAX_REQUEST_BYTES)
    request = json.loads(line or b"{}")
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    return request


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, instance_uuid: str, handler: Handler):
        self.instance_uuid, self.handler = instance_uuid, handler
        super().__init__(path, _RequestHandler)


class _RequestHandler(socketserver.StreamRequestHandler):
    timeout = REQUEST_TIMEOUT_S

    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        try:
            request = read_request(self.rfile)
            answer = server.handler(server.instance_uuid, request, peer_pid(self.connection))
        except (ValueError, OSError) as exc:
            answer = {"ok": False, "reason": "error", "error": f"bad request: {exc}"}
        with contextlib.suppress(OSError):  # the guest gave up waiting: nothing to tell it
            self.wfile.write(json.dumps(answer).encode() + b"\n")


class ChannelServers:
    """The channel sockets of every VM of this hypervisor, each served by its own thread."""

    def __init__(self, directory: Path, handler: Handler):
        self.directory, self.handler = directory, handler
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()

    def socket_dir(self, instance_uuid: str) -> Path:
        return self.directory / instance_uuid

    def start(self, instance_uuid: str) -> Path:
        """Serve INSTANCE_UUID's socket (again, after a restart); return the directory the VM mounts."""
        with self._lock:
            folder = self.socket_dir(instance_uuid)
            if instance_uuid in self._servers:
                return folder
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / SOCKET_NAME
            path.unlink(missing_ok=True)
            server = _Server(str(path), instance_uuid, self.handler)
            os.chmod(path, 0o660)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                      name=f"hv-channel-{instance_uuid[:8]}", daemon=True)
            thread.start()
            self._servers[instance_uuid] = server
            LOG.info("hypervisor channel of %s at %s", instance_uuid, path)
            return folder

    def stop(self, instance_uuid: str, remove: bool = False) -> None:
        with self._lock:
            server = self._servers.pop(instance_uuid, None)
        if server is not None:
            server.shutdown()
            server.server_close()
        if remove:
            shutil.rmtree(self.socket_dir(instance_uuid), ignore_errors=True)

    def stop_all(self) -> None:
        for instance_uuid in list(self._servers):
            self.stop(instance_uuid)


def ask(socket_path: str, request: dict, timeout_s: float = REQUEST_TIMEOUT_S) -> dict:
    """A client of the channel (what the VM image's substitute does; used by tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout_s)
        connection.connect(socket_path)
        connection.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(connection.makefile("rb").readline(MAX_REQUEST_BYTES) or b"{}")
