"""The metadata proxy: what neutron-metadata-agent and its haproxy do, in one process.

Each router namespace redirects 169.254.169.254:80 from its qr- devices to
``naming.METADATA_PROXY_PORT``, where a socket of this process listens (made
inside that namespace). The proxy finds the instance by the request's source
address among the router's networks and forwards the request to
nova-metadata with the headers Nova checks: X-Forwarded-For, X-Instance-ID
(the port's device_id), X-Tenant-ID and X-Instance-ID-Signature
(HMAC-SHA256 of the instance id with the shared secret, hex).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from astrostack_localcloud import naming
from astrostack_localcloud.net import netns
from astrostack_localcloud.net.desired import MetadataTarget

LOG = logging.getLogger("astrostack_localcloud.net.metadata")
UPSTREAM_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 30.0
# Neutron passes these answers of Nova through; anything else becomes a 500.
PASSED_THROUGH = {200, 400, 403, 404, 409, 500, 502, 503, 504}
MAX_BODY = 1 << 20


def sign_instance_id(secret: str, instance_id: str) -> str:
    """neutron.common.utils.sign_instance_id."""
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    secret: str
    namespace: str | None = None       # where to connect from (None: this process's namespace)
    timeout: float = UPSTREAM_TIMEOUT_S


def upstream_headers(target: MetadataTarget, client_ip: str, secret: str) -> dict[str, str]:
    return {"X-Forwarded-For": client_ip, "X-Instance-ID": target.instance_id,
            "X-Tenant-ID": target.project_id,
            "X-Instance-ID-Signature": sign_instance_id(secret, target.instance_id)}


class _UpstreamConnection(http.client.HTTPConnection):
    def __init__(self, upstream: Upstream):
        super().__init__(upstream.host, upstream.port, timeout=upstream.timeout)
        self._namespace = upstream.namespace

    def connect(self) -> None:
        self.sock = netns.connect((self.host, self.port), self.timeout, self._namespace)


Lookup = Callable[[str, str], "MetadataTarget | None"]


class _Handler(BaseHTTPRequestHandler):
    server: _RouterServer
    protocol_version = "HTTP/1.0"
    timeout = CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        LOG.debug("router %s: " + format, self.server.router_id, *args)

    def _forward(self) -> None:
        client_ip = self.client_address[0]
        target = self.server.lookup(self.server.router_id, client_ip)
        if target is None:
            LOG.warning("metadata: no port with address %s behind router %s", client_ip, self.server.router_id)
            self._reply(404, b"Not Found\n", "text/plain")
            return
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        body = self.rfile.read(length) if length else None
        try:
            status, content_type, data = self._ask_nova(target, client_ip, body)
        except OSError as exc:
            LOG.warning("metadata: nova-metadata %s:%s unreachable for %s: %s",
                        self.server.upstream.host, self.server.upstream.port, client_ip, exc)
            self._reply(503, b"The remote metadata server is temporarily unavailable.\n", "text/plain")
            return
        if status not in PASSED_THROUGH:
            LOG.warning("metadata: unexpected answer %s of nova-metadata for %s", status, client_ip)
            status = 500
        if status == 403:
            LOG.warning("metadata: nova-metadata answered 403 for %s (shared secrets differ?)", client_ip)
        self._reply(status, data if status == 200 else b"", content_type)

    def _ask_nova(self, target: MetadataTarget, client_ip: str, body: bytes | None) -> tuple[int, str, bytes]:
        upstream = self.server.upstream
        connection = _UpstreamConnection(upstream)
        try:
            headers = upstream_headers(target, client_ip, upstream.secret)
            if body is not None:
                headers["Content-Type"] = self.headers.get("Content-Type", "application/octet-stream")
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type", "text/plain"), response.read()
        finally:
            connection.close()

    def _reply(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward


class _RouterServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128       # a whole cluster's VMs ask at once while they boot

    def __init__(self, router_id: str, namespace: str | None, lookup: Lookup, upstream: Upstream,
                 address: tuple[str, int]):
        super().__init__(address, _Handler, bind_and_activate=False)
        self.router_id = router_id
        self.lookup = lookup
        self.upstream = upstream
        self.socket.close()
        self.socket = netns.listening_socket(address, namespace, self.request_queue_size)
        self.server_address = self.socket.getsockname()


@dataclass
class _Running:
    server: _RouterServer
    thread: threading.Thread
    namespace_inode: int | None


class MetadataProxy:
    """One listening socket per router namespace, all served by this process."""

    def __init__(self, lookup: Lookup, upstream: Upstream, port: int = naming.METADATA_PROXY_PORT,
                 bind_address: str = "0.0.0.0"):
        # 0.0.0.0 inside a router's own namespace is only that router's addresses.
        self.lookup = lookup
        self.upstream = upstream
        self.address = (bind_address, port)
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()

    def ensure(self, router_id: str, namespace: str | None) -> bool:
        """Listening in the router's namespace (again, if the namespace was made anew); True if started."""
        inode = netns.namespace_inode(namespace) if namespace else None
        with self._lock:
            running = self._running.get(router_id)
            if running and running.namespace_inode == inode and running.thread.is_alive():
                return False
            if running:
                self._stop(running)
            server = _RouterServer(router_id, namespace, self.lookup, self.upstream, self.address)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                      name=f"metadata-{router_id[:8]}", daemon=True)
            thread.start()
            self._running[router_id] = _Running(server, thread, inode)
            return True

    def listening(self, router_id: str) -> tuple[str, int]:
        with self._lock:
            return self._running[router_id].server.server_address

    def routers(self) -> set[str]:
        with self._lock:
            return set(self._running)

    def remove(self, router_id: str) -> None:
        with self._lock:
            running = self._running.pop(router_id, None)
        if running:
            self._stop(running)

    def close(self) -> None:
        for router_id in list(self.routers()):
            self.remove(router_id)

    @staticmethod
    def _stop(running: _Running) -> None:
        running.server.shutdown()
        running.server.server_close()
        running.thread.join(timeout=5)
