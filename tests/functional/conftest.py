"""Fixtures of the functional tests: a real Docker engine and a real local Heat engine.

Environment:
  ASTROSTACK_HEAT_VENV   reuse this Heat venv (created there if missing) instead of
                         installing openstack-heat into the throw-away home.
  ASTROSTACK_HEAT_PORT   port of the test engine; default: a free port.
  ASTROSTACK_TEST_TIMEOUT  seconds any single wait may take (default 180).
  ASTROSTACK_REQUIRE_LOCAL_CLOUD  fail (not skip) when there is no Docker engine (CI sets it).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from astrostack.bench.matrix import merged

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
        if os.environ.get("ASTROSTACK_REQUIRE_LOCAL_CLOUD"):
            pytest.fail(f"Docker engine not available and ASTROSTACK_REQUIRE_LOCAL_CLOUD is set: {exc}")
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


# --- clusters on the test engine (tests/functional/test_lifecycle.py) ------------

EXAMPLE_SPEC = Path(__file__).resolve().parents[2] / "examples" / "local.yaml"
CLUSTER_LABEL = "astrostack.cluster"


def free_port(host: str) -> int:
    """A TCP port nothing listens on at HOST (for a second engine, a proxy)."""
    return _free_port(host)


def phase_timeout() -> int:
    """Each deployment phase's timeout: the test timeout, never below Heat's 60 s."""
    return max(60, int(_timeout()))


@pytest.fixture(scope="session")
def cluster_images(docker_client):
    """astrostack/vm and astrostack/mpi-base exist (built once when missing)."""
    from astrostack import images

    for recipe in ("vm", "mpi-base"):
        if not images.image_exists(f"astrostack/{recipe}:latest"):
            images.ensure_base_image(progress=print)
            images.build(recipe, progress=print)


@pytest.fixture
def make_spec(heat_engine, cluster_images):
    """``make_spec(name, cidr, **overrides)``: examples/local.yaml as a ClusterSpec
    named NAME on network.cidr CIDR, each phase timed out at ``phase_timeout()``;
    ``overrides`` are top-level spec fields, mappings merged into the example's."""
    import yaml

    from astrostack.spec import spec_from_dict

    example = yaml.safe_load(EXAMPLE_SPEC.read_text())
    seconds = phase_timeout()

    def make(name: str, cidr: str, **overrides):
        data = merged(example, {
            "name": name,
            "network": {"cidr": cidr},
            "timeouts": {"stack_create": seconds, "hosts_ready": seconds, "nodes_ready": seconds,
                         "delete": seconds},
        })
        return spec_from_dict(merged(data, overrides), source=f"test spec {name}")

    return make


@pytest.fixture
def spec_file(tmp_path):
    """``spec_file(spec)``: the spec written as YAML for the CLI; returns the path as str."""
    import yaml

    def write(spec) -> str:
        path = tmp_path / f"{spec.name}.yaml"
        path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        return str(path)

    return write


def labelled(docker_client, cluster: str) -> dict[str, list[str]]:
    """Docker containers, networks and volumes labelled with the cluster, by kind."""
    label = {"label": f"{CLUSTER_LABEL}={cluster}"}
    return {
        "containers": [c.name for c in docker_client.containers.list(all=True, filters=label)],
        "networks": [n.name for n in docker_client.networks.list(filters=label)],
        "volumes": [v.name for v in docker_client.volumes.list(filters=label)],
    }


@pytest.fixture
def cluster_cleanup(heat_engine, docker_client):
    """``cluster_cleanup(name)`` registers a cluster to delete after the test
    whatever happened (down --force, then a sweep of the Docker objects)."""
    from astrostack import lifecycle
    from astrostack.cleanup import LocalSweeper, sweep
    from astrostack.errors import AstrostackError

    names: list[str] = []
    yield names.append
    for name in names:
        try:
            lifecycle.down(name, cloud_name="local", force=True)
        except AstrostackError as exc:
            print(f"cleanup of {name}: {exc}")
        sweep(LocalSweeper(), name)
