"""Retries of transient cloud errors, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest
import requests
from keystoneauth1.exceptions import connection as ksa_connection
from keystoneauth1.exceptions import http as ksa_http
from openstack import exceptions as sdk_exceptions

from astrostack.errors import CloudError, CloudUnreachable
from astrostack.retry import call_with_retry, is_transient, with_retry


class FlakyServer:
    """Answers ``failures`` times with ``status``, then 200 "ok"; counts requests."""

    def __init__(self, status: int, failures: int):
        self.status = status
        self.failures = failures
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                failing = len(server.requests) <= server.failures
                body = b"busy" if failing else b"ok"
                self.send_response(server.status if failing else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/admin/stacks/demo"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.httpd.shutdown()
        self.httpd.server_close()


def get(url: str) -> str:
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    return response.text


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_503_three_times_then_success():
    sleeps: list[float] = []
    with FlakyServer(status=503, failures=3) as server:
        body = call_with_retry(get, server.url, sleep=sleeps.append)

    assert body == "ok"
    assert len(server.requests) == 4
    assert len(sleeps) == 3
    # wait_random_exponential(multiplier=0.5): uniform in [0, 0.5 * 2**(n-1)], capped at max_wait
    for attempt, slept in enumerate(sleeps, start=1):
        assert 0 <= slept <= 0.5 * 2 ** (attempt - 1)


def test_429_is_retried():
    sleeps: list[float] = []
    with FlakyServer(status=429, failures=1) as server:
        assert call_with_retry(get, server.url, sleep=sleeps.append) == "ok"

    assert len(server.requests) == 2 and len(sleeps) == 1


def test_404_is_not_retried():
    sleeps: list[float] = []
    with FlakyServer(status=404, failures=10) as server, pytest.raises(requests.exceptions.HTTPError) as caught:
        call_with_retry(get, server.url, sleep=sleeps.append)

    assert caught.value.response.status_code == 404
    assert len(server.requests) == 1
    assert sleeps == []


def test_exhausted_5xx_raises_a_one_line_cloud_error_naming_the_request():
    sleeps: list[float] = []
    with FlakyServer(status=503, failures=100) as server, pytest.raises(CloudError) as caught:
        call_with_retry(get, server.url, attempts=3, sleep=sleeps.append)

    error = caught.value
    assert not isinstance(error, CloudUnreachable)
    assert len(server.requests) == 3 and len(sleeps) == 2
    assert error.message == f"GET {server.url}: HTTP 503 after 3 attempts ({sum(sleeps):.1f} s of waits)"
    assert "\n" not in str(error)
    assert isinstance(error.__cause__, requests.exceptions.HTTPError)


def test_refused_connection_exhausted_raises_cloud_unreachable():
    url = f"http://127.0.0.1:{unused_port()}/v1/admin/stacks"
    sleeps: list[float] = []

    with pytest.raises(CloudUnreachable) as caught:
        call_with_retry(get, url, sleep=sleeps.append)

    assert len(sleeps) == 4  # 5 attempts
    assert all(0 <= slept <= 8 for slept in sleeps)
    assert caught.value.message.startswith(f"GET {url}: no answer after 5 attempts")
    assert caught.value.message.endswith("(ConnectionError)")
    assert "\n" not in str(caught.value)


def test_an_api_that_never_answers_is_retried_then_unreachable():
    """A server that accepts and says nothing (an API waiting on a restarting Keystone)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v2.1/servers/detail"
        sleeps: list[float] = []

        with pytest.raises(CloudUnreachable) as caught:
            call_with_retry(lambda: requests.get(url, timeout=0.2), attempts=2, sleep=sleeps.append)

    assert len(sleeps) == 1
    assert caught.value.transient
    assert caught.value.message.startswith(f"GET {url}: no answer after 2 attempts")
    assert caught.value.message.endswith("(ReadTimeout)")


def test_max_wait_caps_every_sleep():
    sleeps: list[float] = []
    with FlakyServer(status=502, failures=100) as server, pytest.raises(CloudError):
        call_with_retry(get, server.url, attempts=8, max_wait=1.5, sleep=sleeps.append)

    assert len(sleeps) == 7
    assert max(sleeps) <= 1.5


def test_decorator_retries_like_the_function():
    sleeps: list[float] = []

    @with_retry(attempts=4, sleep=sleeps.append)
    def fetch(url):
        return get(url)

    with FlakyServer(status=500, failures=2) as server:
        assert fetch(server.url) == "ok"

    assert len(server.requests) == 3 and len(sleeps) == 2
    assert fetch.__name__ == "fetch"


# Classification of the SDKs' own exceptions (constructed, not mocked) ---------


def sdk_http_error(status: int) -> sdk_exceptions.HttpException:
    response = requests.Response()
    response.status_code = status
    response.url = "http://heat.example:8004/v1/admin/stacks"
    response.request = requests.Request("GET", response.url).prepare()
    return sdk_exceptions.HttpException(message="Error", response=response)


@pytest.mark.parametrize("exc", [
    sdk_http_error(500), sdk_http_error(503), sdk_http_error(429),
    ksa_http.ServiceUnavailable(), ksa_http.InternalServerError(),
    ksa_connection.ConnectFailure("refused"), ksa_connection.ConnectTimeout("no answer"),
    requests.exceptions.ConnectionError("reset"), requests.exceptions.ReadTimeout("no answer"), TimeoutError(),
    ConnectionResetError(), ConnectionRefusedError(),
], ids=repr)
def test_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    sdk_http_error(400), sdk_http_error(404), sdk_http_error(409), sdk_http_error(413),
    sdk_exceptions.ResourceNotFound("no stack"), ksa_http.NotFound(), ksa_http.Unauthorized(),
    ksa_connection.SSLError("bad cert"), requests.exceptions.SSLError("bad cert"),
    ValueError("validation"), KeyError("x"),
], ids=repr)
def test_not_transient(exc):
    assert not is_transient(exc)


def test_sdk_error_message_names_method_url_and_status():
    attempts = iter([sdk_http_error(503)] * 2)

    def list_stacks():
        raise next(attempts)

    with pytest.raises(CloudError) as caught:
        call_with_retry(list_stacks, attempts=2, sleep=lambda _s: None)

    assert caught.value.message.startswith("GET http://heat.example:8004/v1/admin/stacks: HTTP 503 after 2 attempts")
