"""Fixtures of the functional tests: a real Docker engine and a real local Heat engine.

Environment:
  ASTROSTACK_HEAT_VENV   reuse this Heat venv (created there if missing) instead of
                         installing openstack-heat into the throw-away home.
  ASTROSTACK_HEAT_PORT   port of the test engine; default: a free port.
  ASTROSTACK_TEST_TIMEOUT  seconds any single wait may take (default 180).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).parent / "templates"


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    """tests/functional/templates."""
    return TEMPLATES


def _timeout() -> float:
    return float(os.environ.get("ASTROSTACK_TEST_TIMEOUT", "180"))


@pytest.fixture(scope="session")
def wait_timeout() -> float:
    """Seconds any single wait of a functional test may take."""
    return _timeout()


@pytest.fixture(scope="session")
def docker_client():
    """A Docker SDK client on a daemon that answers; skips the test otherwise."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"Docker engine not available: {exc}")
    yield client
    client.close()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def heat_engine(docker_client, tmp_path_factory):
    """A local Heat engine in a throw-away ASTROSTACK_HOME, stopped at the end."""
    from astrostack.local import engine

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ASTROSTACK_HOME", str(tmp_path_factory.mktemp("astrostack-home")))
        if "ASTROSTACK_HEAT_PORT" not in os.environ:
            patch.setenv("ASTROSTACK_HEAT_PORT", str(_free_port(engine.choose_bind_address())))
        engine.install(progress=print)
        state = engine.start(timeout=_timeout())
        try:
            yield state
        finally:
            engine.stop()


@pytest.fixture(scope="session")
def local_cloud(heat_engine):
    """An openstacksdk Connection to the test engine."""
    from astrostack import cloud

    conn = cloud.connect("local")
    yield conn
    conn.close()
