"""Fixtures of the functional tests: the real local cloud (a real OpenStack on
this machine whose servers are container-VMs), the real Docker engine, and the
clusters the tests deploy on them.

Environment:
  ASTROSTACK_TEST_TIMEOUT         seconds any single wait may take (default 180).
  ASTROSTACK_REQUIRE_LOCAL_CLOUD  fail (not skip) when the local cloud cannot run (CI sets it).

scripts/functional.sh runs these tests ASTROSTACK_TEST_WORKERS at a time
(default 1; more with pytest-xdist, one test project per worker), then the
``exclusive`` ones (they stop or cut off something every test uses) alone.
Side by side, the tests of a module that shares a module-scoped cluster or
lab stay on one worker; test_clusters.py's tests are each on their own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from astrostack.bench.matrix import merged

TEMPLATES = Path(__file__).parent / "templates"
EXAMPLE_SPEC = Path(__file__).resolve().parents[2] / "examples" / "local.yaml"
# Test clusters are named ft-*: a benchmark waits while such clusters run.
TEST_PREFIX = "ft-"
# Modules whose tests share nothing but session fixtures: spread over the workers test by test.
INDEPENDENT_MODULES = {"test_clusters.py"}


def pytest_collection_modifyitems(config, items):
    """Every other module's tests go to one worker (``--dist loadgroup``): they share a
    module-scoped cluster, lab or image that one worker sets up once."""
    for item in items:
        if item.path.name not in INDEPENDENT_MODULES:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@contextlib.contextmanager
def machine_lock(name: str):
    """Held by one test process of this machine at a time (the workers build and start
    the same things)."""
    from filelock import FileLock

    with FileLock(os.path.join(tempfile.gettempdir(), f"astrostack-tests-{name}.lock")):
        yield


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    """tests/functional/templates."""
    return TEMPLATES


def _timeout() -> float:
    return float(os.environ.get("ASTROSTACK_TEST_TIMEOUT", "180"))


def phase_timeout() -> int:
    """Each deployment phase's timeout: the test timeout, never below Heat's 60 s."""
    return max(60, int(_timeout()))


@pytest.fixture(scope="session")
def wait_timeout() -> float:
    """Seconds any single wait of a functional test may take."""
    return _timeout()


def _unavailable(reason: str) -> None:
    if os.environ.get("ASTROSTACK_REQUIRE_LOCAL_CLOUD"):
        pytest.fail(f"{reason} and ASTROSTACK_REQUIRE_LOCAL_CLOUD is set")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    """A Docker SDK client on a daemon that answers."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        _unavailable(f"Docker engine not available: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def local_cloud(docker_client):
    """The local cloud, running (started here when it is not: the first start installs it)."""
    if os.geteuid() != 0:
        _unavailable("the local cloud needs root (bridges, iptables, loop devices)")
    from astrostack.local import controlplane

    with machine_lock("local-cloud"):  # a second `local start` beside a running one refuses: take turns
        remove_cutoffs_left_behind()
        controlplane.start(say=print)
    return controlplane


# The comment on the rule a test inserts to cut the VMs off from Heat (removed at the
# session's start should a killed run have left it: it would fail every later deploy).
CUTOFF_COMMENT = ["-m", "comment", "--comment", "astrostack-test-cutoff"]


def remove_cutoffs_left_behind() -> None:
    listed = subprocess.run(["iptables", "-w", "10", "-S", "INPUT"], capture_output=True, text=True, check=True)
    for line in listed.stdout.splitlines():
        if line.startswith("-A INPUT ") and CUTOFF_COMMENT[-1] in line:
            print(f"removing a cut-off rule a test left behind: {line}")
            subprocess.run(["iptables", "-w", "10", "-D", *line.split()[1:]], check=True)


@pytest.fixture(scope="session")
def test_project(local_cloud, tmp_path_factory):
    """A project and user of this test session, standing in for the user ``astrostack``.

    The session's clouds.yaml ($OS_CLIENT_CONFIG_FILE, inherited by the CLI the
    tests run) holds every entry of the real one, with ``astrostack-local`` naming
    this user in this project: ``cloud: local`` resolves to it exactly as it does
    for a user, and what the tests count is theirs alone, whatever else the cloud
    runs meanwhile. Deleted at the end when nothing is left in it (kept, and
    said, otherwise: its leftovers are evidence).
    """
    import secrets as secrets_module
    import uuid

    import yaml

    from astrostack import cloud
    from astrostack.local import bootstrap, clouds_yaml

    admin = cloud.connect(cloud.LOCAL_ADMIN_ENTRY)
    name = f"ft-session-{uuid.uuid4().hex[:8]}"
    project = admin.identity.create_project(name=name, domain_id="default",
                                            description="astrostack functional tests (deleted when empty)")
    password = secrets_module.token_urlsafe(24)
    account = admin.identity.create_user(name=name, password=password, domain_id="default",
                                         default_project_id=project.id)
    for role in bootstrap.ASTROSTACK_ROLES:
        admin.identity.assign_project_role_to_user(project, account, admin.identity.find_role(role, ignore_missing=False))
    admin.set_compute_quotas(project.id, **bootstrap.COMPUTE_QUOTAS)
    admin.set_network_quotas(project.id, **bootstrap.NETWORK_QUOTAS)
    admin.set_volume_quotas(project.id, **bootstrap.VOLUME_QUOTAS)

    real = clouds_yaml.clouds_yaml_path()
    config = yaml.safe_load(real.read_text())
    config["clouds"][cloud.LOCAL_CLOUD_ENTRY] = clouds_yaml.cloud_entry(name, password, name)
    session_file = tmp_path_factory.mktemp("clouds") / "clouds.yaml"
    session_file.write_text(yaml.safe_dump(config))
    session_file.chmod(0o600)
    previous = os.environ.get(clouds_yaml.CONFIG_ENV)
    os.environ[clouds_yaml.CONFIG_ENV] = str(session_file)
    try:
        yield project
    finally:
        if previous is None:
            os.environ.pop(clouds_yaml.CONFIG_ENV, None)
        else:
            os.environ[clouds_yaml.CONFIG_ENV] = previous
        _delete_test_project(admin, project, account)
        admin.close()


def _delete_test_project(admin, project, account) -> None:
    left = [server.name for server in admin.compute.servers(all_projects=True, project_id=project.id)]
    left += [f"volume {v.name}" for v in admin.block_storage.volumes(all_projects=True, project_id=project.id)]
    left += [f"network {n.name}" for n in admin.network.networks(project_id=project.id)]
    if left:
        print(f"test project {project.name} kept: {', '.join(left[:10])} left in it")
        return
    for group in admin.network.security_groups(project_id=project.id):
        admin.network.delete_security_group(group, ignore_missing=True)
    admin.identity.delete_user(account, ignore_missing=True)
    admin.identity.delete_project(project, ignore_missing=True)


@pytest.fixture(scope="session")
def clouds(test_project):
    """(user, admin) openstacksdk connections to the local cloud: the session's user, and the admin."""
    from astrostack import cloud

    user = cloud.connect(cloud.LOCAL_CLOUD)
    admin = cloud.connect(cloud.LOCAL_ADMIN_ENTRY)
    assert user.current_project_id == test_project.id
    yield user, admin
    user.close()
    admin.close()


def cloud_counts(user, admin) -> dict[str, int]:
    """What a cluster creates and its `down` must remove, in the user's project,
    counted through the APIs (Heat's stack domain users: those of this project's stacks)."""
    project_id = user.current_project_id
    heat_domain = admin.identity.find_domain("heat", ignore_missing=False)
    stack_projects = {p.id for p in admin.identity.projects(domain_id=heat_domain.id)
                      if p.name.startswith(f"{project_id}-")}
    return {
        "servers": len(list(user.compute.servers())),
        "ports": len(list(user.network.ports(project_id=project_id))),
        "networks": len(list(user.network.networks(project_id=project_id))),
        "routers": len(list(user.network.routers(project_id=project_id))),
        "floating_ips": len(list(user.network.ips(project_id=project_id))),
        "security_groups": len(list(user.network.security_groups(project_id=project_id))),
        "volumes": len(list(user.block_storage.volumes())),
        "keypairs": len(list(user.compute.keypairs())),
        "stacks": len(list(user.orchestration.stacks())),
        "trusts": len(list(admin.identity.trusts(trustor_user_id=user.current_user_id))),
        "stack_domain_users": sum(1 for u in admin.identity.users(domain_id=heat_domain.id)
                                  if u.default_project_id in stack_projects),
    }


def built_image(recipe: str) -> str:
    """astrostack/RECIPE:latest on this machine, built from images/RECIPE if it is not
    there yet or was built from an older recipe (`up` pushes it to the site registry)."""
    from astrostack import images

    reference = f"astrostack/{recipe}:latest"
    with machine_lock("images"):
        if not images.built_from_current_recipe(recipe):
            images.ensure_base_image(progress=print)
            images.build(recipe, progress=print)
    return reference


@pytest.fixture(scope="session")
def app_image(docker_client):
    """astrostack/mpi-base on this machine (built once)."""
    return built_image("mpi-base")


@pytest.fixture
def make_spec(test_project, app_image):
    """``make_spec(name, cidr, **overrides)``: examples/local.yaml as a ClusterSpec
    named NAME on network.cidr CIDR, each phase timed out at ``phase_timeout()``;
    ``overrides`` are top-level spec fields, mappings merged into the example's."""
    import yaml

    from astrostack.spec import spec_from_dict

    example = yaml.safe_load(EXAMPLE_SPEC.read_text())
    seconds = phase_timeout()

    def make(name: str, cidr: str, **overrides):
        assert name.startswith(TEST_PREFIX), name
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


@pytest.fixture
def cluster_cleanup(test_project):
    """``cluster_cleanup(name)`` registers a cluster to delete after the test,
    whatever happened (down --force finds it by its stack and mark)."""
    from astrostack import lifecycle
    from astrostack.errors import AstrostackError, UnknownCluster

    names: list[str] = []
    yield names.append
    for name in names:
        try:
            lifecycle.down(name, cloud_name="local", force=True)
        except UnknownCluster:
            continue
        except AstrostackError as exc:
            print(f"cleanup of {name}: {exc}")
