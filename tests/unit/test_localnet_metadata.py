"""The metadata proxy against a fake nova-metadata, both real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from astrostack_localcloud.net.desired import MetadataTarget
from astrostack_localcloud.net.metadata import MetadataProxy, Upstream, sign_instance_id

SECRET = "shared"
ROUTER = "router-1"


class FakeNova:
    """Answers like nova-metadata: 403 on a bad signature, else what it was told."""

    def __init__(self, status: int = 200):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                headers = dict(self.headers.items())
                outer.requests.append({"method": self.command, "path": self.path, "headers": headers,
                                       "body": self.rfile.read(length).decode()})
                good = hmac.new(SECRET.encode(), headers.get("X-Instance-ID", "").encode(),
                                hashlib.sha256).hexdigest() == headers.get("X-Instance-ID-Signature")
                code = status if good else 403
                body = json.dumps({"uuid": headers.get("X-Instance-ID")}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def nova():
    server = FakeNova()
    yield server
    server.close()


def proxy_for(port: int, secret: str = SECRET, targets=None):
    targets = targets if targets is not None else {(ROUTER, "127.0.0.1"): MetadataTarget("inst-1", "proj-1")}
    proxy = MetadataProxy(lambda router, ip: targets.get((router, ip)),
                          Upstream("127.0.0.1", port, secret, timeout=5), port=0, bind_address="127.0.0.1")
    proxy.ensure(ROUTER, None)
    return proxy


def ask(proxy, method="GET", path="/openstack/latest/meta_data.json", body=None):
    host, port = proxy.listening(ROUTER)
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def test_the_signature_is_neutrons_hmac_sha256_hex():
    assert sign_instance_id("secret", "abc") == hmac.new(b"secret", b"abc", hashlib.sha256).hexdigest()


def test_a_request_reaches_nova_with_the_instance_headers_signed(nova):
    proxy = proxy_for(nova.port)
    try:
        status, content_type, body = ask(proxy, path="/latest/meta-data/instance-id?x=1")
    finally:
        proxy.close()
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"uuid": "inst-1"})
    (request,) = nova.requests
    assert request["path"] == "/latest/meta-data/instance-id?x=1"
    headers = request["headers"]
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Instance-ID"] == "inst-1" and headers["X-Tenant-ID"] == "proj-1"
    assert headers["X-Instance-ID-Signature"] == sign_instance_id(SECRET, "inst-1")


def test_a_post_carries_its_body(nova):
    proxy = proxy_for(nova.port)
    try:
        status, _, _ = ask(proxy, "POST", "/openstack/2013-04-04/password", body=b"secret-password")
    finally:
        proxy.close()
    assert status == 200 and nova.requests[0]["body"] == "secret-password"


def test_an_unknown_source_address_is_404_and_never_asks_nova(nova):
    proxy = proxy_for(nova.port, targets={})
    try:
        status, _, _ = ask(proxy)
    finally:
        proxy.close()
    assert status == 404 and nova.requests == []


def test_a_wrong_secret_is_novas_403(nova):
    proxy = proxy_for(nova.port, secret="other")
    try:
        assert ask(proxy)[0] == 403
    finally:
        proxy.close()


def test_nova_down_is_503():
    dead = FakeNova()
    port = dead.port
    dead.close()
    proxy = proxy_for(port)
    try:
        assert ask(proxy)[0] == 503
    finally:
        proxy.close()


def test_ensure_is_idempotent_and_remove_closes_the_socket(nova):
    proxy = proxy_for(nova.port)
    address = proxy.listening(ROUTER)
    assert proxy.ensure(ROUTER, None) is False
    proxy.remove(ROUTER)
    assert proxy.routers() == set()
    with pytest.raises(OSError):
        http.client.HTTPConnection(*address, timeout=1).connect()
