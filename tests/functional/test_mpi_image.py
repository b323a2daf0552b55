"""astrostack/mpi-base for real: two nodes on a user-defined bridge run MPI jobs.

Real components only: the Docker engine, the image's entrypoint and sshd, Open
MPI over TCP. Every container and network is named ``imgtest-*`` and removed at
the end, whatever happens.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from astrostack import images, keys

pytestmark = pytest.mark.functional

IMAGE = "astrostack/mpi-base:latest"
TEST_LABEL = {"astrostack.test": "test_mpi_image"}
# Inside the container, below the SDK client's 30 s read timeout, so a hung
# job fails with mpirun's output instead of a client error.
MPI_RUN_TIMEOUT_S = 25


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def mpi_image(docker_client) -> str:
    """The image, built from the working tree (cached layers make this quick)."""
    images.ensure_base_image(progress=print)
    images.build("mpi-base", progress=print)
    return IMAGE


@pytest.fixture(scope="module")
def node_key(tmp_path_factory) -> tuple[Path, Path]:
    """A throw-away cluster key pair made by astrostack's own key module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ASTROSTACK_HOME", str(tmp_path_factory.mktemp("astrostack-home")))
        private, _ = keys.ensure_cluster_key("imgtest")
    return private, private.with_suffix(".pub")


def wait_ready(container, timeout: float) -> None:
    """Wait until the node is what the cluster's probe calls ready: its node file
    written and its sshd accepting connections (the image has no HEALTHCHECK)."""
    probe = ["bash", "-c", "test -s /etc/astrostack-node.json && exec 3<>/dev/tcp/127.0.0.1/22"]
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        state = container.attrs["State"]
        if state["Status"] in ("exited", "dead"):
            logs = container.logs().decode(errors="replace")
            pytest.fail(f"{container.name} exited {state['ExitCode']} while starting:\n{logs}")
        if state["Status"] == "running" and container.exec_run(probe).exit_code == 0:
            return
        if time.monotonic() > deadline:
            logs = container.logs().decode(errors="replace")
            pytest.fail(f"{container.name} not ready (node file, sshd) within {timeout} s:\n{logs}")
        time.sleep(0.5)


def node_info(container) -> dict:
    code, output = container.exec_run(["cat", "/etc/astrostack-node.json"])
    assert code == 0, output
    return json.loads(output)


def run_mpi(container, *command: str) -> tuple[int, str, str]:
    """Run a command in the container; return (exit code, stdout, stderr)."""
    code, (stdout, stderr) = container.exec_run(
        ["timeout", str(MPI_RUN_TIMEOUT_S), *command], demux=True)
    return code, (stdout or b"").decode(), (stderr or b"").decode()


@pytest.fixture
def two_nodes(docker_client, mpi_image, node_key, tmp_path, wait_timeout):
    """A master and a worker on their own bridge, each with its own /share.

    Yields [(container, node info, share dir)] with the master first.
    """
    private, public = node_key
    network = docker_client.networks.create(unique_name("imgtest-net"), driver="bridge",
                                            labels=TEST_LABEL)
    containers = []
    try:
        network.reload()
        cidr = network.attrs["IPAM"]["Config"][0]["Subnet"]
        nodes = []
        for role in ("master", "worker"):
            name = unique_name(f"imgtest-{role}")
            share = tmp_path / name
            share.mkdir()
            container = docker_client.containers.run(
                mpi_image, detach=True, name=name, hostname=name, network=network.name,
                labels=TEST_LABEL,
                environment={"ASTRO_ROLE": role, "ASTRO_CLUSTER": "imgtest", "ASTRO_SLOTS": "2",
                             "ASTRO_OVERLAY_CIDR": cidr},
                volumes={str(private): {"bind": "/run/secrets/ssh_key", "mode": "ro"},
                         str(public): {"bind": "/run/secrets/ssh_pub", "mode": "ro"},
                         str(share): {"bind": "/share", "mode": "rw"}})
            containers.append(container)
            nodes.append((container, share))
        for container, _ in nodes:
            wait_ready(container, wait_timeout)
        yield [(container, node_info(container), share) for container, share in nodes]
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()


def test_smoke_job_spans_both_nodes(two_nodes):
    (master, master_info, _), (worker, worker_info, _) = two_nodes
    assert master_info["role"] == "master" and worker_info["role"] == "worker"
    hosts = f"{master_info['ip']}:2,{worker_info['ip']}:2"

    code, stdout, stderr = run_mpi(master, "mpirun", "-np", "4", "--host", hosts,
                                   "/usr/local/bin/mpi_smoke")

    assert code == 0, f"mpirun exited {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["size"] == 4
    assert sorted(summary["hosts"]) == sorted([master.name] * 2 + [worker.name] * 2)
    assert summary["ring_ok"] is True
    assert summary["allreduce_ok"] is True
    assert summary["seconds"] > 0


def test_file_probe_reports_what_each_node_sees(two_nodes):
    (master, master_info, master_share), (worker, worker_info, worker_share) = two_nodes
    (master_share / "a.MS").mkdir()
    for name in ("b.MS", "c.MS", "notes.txt"):
        (worker_share / name).touch()

    code, stdout, stderr = run_mpi(master, "mpirun", "-np", "2", "--host",
                                   f"{master_info['ip']}:1,{worker_info['ip']}:1",
                                   "/usr/local/bin/mpi_file_probe", "*.MS")

    assert code == 0, f"mpirun exited {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    lines = [json.loads(line) for line in stdout.strip().splitlines()]
    assert lines == [
        {"rank": 0, "host": master.name, "files": ["/share/a.MS"]},
        {"rank": 1, "host": worker.name, "files": ["/share/b.MS", "/share/c.MS"]},
    ]


def test_node_without_secrets_exits_with_a_clear_message(docker_client, mpi_image, wait_timeout):
    container = docker_client.containers.run(
        mpi_image, detach=True, name=unique_name("imgtest-nokey"), labels=TEST_LABEL,
        environment={"ASTRO_ROLE": "worker"})
    try:
        result = container.wait(timeout=wait_timeout)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)

    assert result["StatusCode"] != 0
    assert "error: /run/secrets/ssh_key is missing or empty" in logs


def test_open_mpi_waits_in_the_smoke_programs_gentle_usleep(docker_client, mpi_image):
    """libmpi's fence waits (usleep(100) in a loop) resolve to mpi_smoke's own usleep,
    which sleeps at least 5 ms: hundreds of ranks waiting in MPI_Init stay asleep."""
    script = ("LD_BIND_NOW=1 LD_DEBUG=bindings mpirun --allow-run-as-root -np 1 -x LD_BIND_NOW -x LD_DEBUG "
              "/usr/local/bin/mpi_smoke 2>&1 | grep -F \"\\`usleep'\"")
    output = docker_client.containers.run(mpi_image, ["sh", "-c", script], remove=True,
                                          labels=TEST_LABEL).decode(errors="replace")
    assert "libmpi.so" in output and "to /usr/local/bin/mpi_smoke" in output, output
