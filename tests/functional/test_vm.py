"""Container VMs on the real Docker engine, running the real cloud-init.

Needs a Docker engine (skipped without one). Builds astrostack/debian and
astrostack/vm once per session (the base image is skipped when present; the
VM image build is a no-op through Docker's layer cache when nothing changed).
Deadlines come from ASTROSTACK_TEST_TIMEOUT (default 180 s), as in conftest.py.
"""

from __future__ import annotations

import ipaddress
import os
import time
import uuid

import docker
import docker.errors
import pytest

from astrostack import images
from astrostack.local import vm

pytestmark = pytest.mark.functional

BOOT_TIMEOUT_S = float(os.environ.get("ASTROSTACK_TEST_TIMEOUT", "180"))
TEST_LABEL = "astrostack.test"

HELLO_USER_DATA = """\
#cloud-config
write_files:
  - path: /etc/astrostack-test/hello
    content: hello from cloud-init
runcmd:
  - [sh, -c, "hostname > /etc/astrostack-test/ran"]
"""

# No systemd in the VM: start dockerd the way the project's user-data falls
# back to, detached, then wait for it with a deadline.
DOCKER_USER_DATA = """\
#cloud-config
write_files:
  - path: /usr/local/sbin/start-dockerd
    permissions: '0755'
    content: |
      #!/bin/sh
      setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
      for attempt in $(seq 60); do
          docker info >/dev/null 2>&1 && exit 0
          sleep 1
      done
      echo "dockerd did not answer within 60 s" >&2
      tail -n 20 /var/log/dockerd.log >&2
      exit 1
runcmd:
  - [/usr/local/sbin/start-dockerd]
"""


@pytest.fixture(scope="session")
def vm_image(docker_client) -> str:
    """astrostack/vm:latest, built (or confirmed by the layer cache) once per session."""
    images.ensure_base_image()
    return images.build("vm")


@pytest.fixture(scope="session")
def network(docker_client):
    """A user-defined bridge network with a subnet, so VMs get fixed IPs."""
    subnet = ipaddress.ip_network(f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}.0/24")
    net = docker_client.networks.create(
        f"astrostack-test-{uuid.uuid4().hex[:8]}", driver="bridge", labels={TEST_LABEL: "1"},
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))]))
    yield net.name, subnet
    net.remove()


@pytest.fixture
def boot(vm_image, network):
    """Boot VMs on the test network; every VM is deleted at the end of the test."""
    booted = []
    net_name, _ = network

    def _boot(suffix: str, user_data: str, ip: str | None = None, **kwargs) -> str:
        name = f"astrotest-{uuid.uuid4().hex[:6]}-{suffix}"
        container_id = vm.boot_vm(name, user_data, {}, net_name, ip, {TEST_LABEL: "1"}, **kwargs)
        booted.append(container_id)
        return container_id

    yield _boot
    for container_id in booted:
        vm.delete_vm(container_id)


def _ip(network, host: int) -> str:
    return str(network[1].network_address + host)


def _exec_ok(container_id: str, command: str) -> str:
    exit_code, output = vm.vm_exec(container_id, command)
    assert exit_code == 0, f"{command!r} exited {exit_code}: {output}"
    return output


def test_two_vms_run_their_cloud_config(boot, network):
    vms = [boot("a", HELLO_USER_DATA, _ip(network, 10)), boot("b", HELLO_USER_DATA, _ip(network, 11))]
    for container_id in vms:
        status = vm.wait_cloud_init(container_id, BOOT_TIMEOUT_S)
        assert status.status == "done"
        assert status.stages_finished == vm.CLOUD_INIT_STAGES
        assert "NoCloud" in status.datasource
        assert _exec_ok(container_id, "cat /etc/astrostack-test/hello") == "hello from cloud-init"
        assert _exec_ok(container_id, "cat /etc/astrostack-test/ran").strip() == _exec_ok(
            container_id, "hostname").strip()
        assert _exec_ok(container_id, "cloud-init status").split() == ["status:", "done"]
    assert vm.vm_state(vms[0]).ip_addresses == {network[0]: _ip(network, 10)}
    _exec_ok(vms[0], f"ping -c 1 -W 5 {_ip(network, 11)}")


def test_vm_carries_the_local_cloud_marker_and_console(boot, network):
    container_id = boot("m", HELLO_USER_DATA)
    vm.wait_cloud_init(container_id, BOOT_TIMEOUT_S)
    assert "local-cloud VM" in _exec_ok(container_id, "cat /etc/astrostack/local-cloud")
    console = vm.console_log(container_id)
    assert "Cloud-init v. 22.4.2 finished" in console
    assert "astrostack-boot: boot finished" in console


def test_shared_dir_is_seen_by_two_vms(boot, network, tmp_path):
    shared = [(str(tmp_path / "share"), "/srv/shared")]
    writer = boot("w", HELLO_USER_DATA, shared_dirs=shared)
    reader = boot("r", HELLO_USER_DATA, shared_dirs=shared)
    _exec_ok(writer, "echo data > /srv/shared/ms.txt")
    assert _exec_ok(reader, "cat /srv/shared/ms.txt") == "data\n"
    assert (tmp_path / "share" / "ms.txt").read_text() == "data\n"


def test_docker_swarm_across_two_vms(boot, network):
    manager_ip = _ip(network, 20)
    manager_data = DOCKER_USER_DATA + f"  - [docker, swarm, init, --advertise-addr, {manager_ip}]\n"
    manager = boot("mgr", manager_data, manager_ip)
    worker = boot("wrk", DOCKER_USER_DATA, _ip(network, 21))
    vm.wait_cloud_init(manager, BOOT_TIMEOUT_S)
    vm.wait_cloud_init(worker, BOOT_TIMEOUT_S)
    token = _exec_ok(manager, "docker swarm join-token -q worker").strip()
    _exec_ok(worker, f"docker swarm join --token {token} {manager_ip}:2377")
    assert _ready_nodes(manager, deadline_s=60) == 2


def _ready_nodes(manager: str, deadline_s: float) -> int:
    """Wait until every swarm node is Ready; return how many there are."""
    deadline = time.monotonic() + deadline_s
    while True:
        states = _exec_ok(manager, "docker node ls --format '{{.Status}}'").split()
        if states and all(state == "Ready" for state in states):
            return len(states)
        assert time.monotonic() < deadline, f"nodes not Ready after {deadline_s} s: {states}"
        time.sleep(1)


def test_delete_removes_container_and_volume(boot, docker_client):
    container_id = boot("d", HELLO_USER_DATA)
    vm.wait_running(container_id, BOOT_TIMEOUT_S)
    volumes = [m["Name"] for m in docker_client.api.inspect_container(container_id)["Mounts"]
               if m["Type"] == "volume"]
    assert len(volumes) == 1 and volumes[0].endswith("-var-lib-docker")
    assert vm.delete_vm(container_id) is True
    assert vm.vm_state(container_id).status == "missing"
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(volumes[0])
    assert vm.delete_vm(container_id) is False


def test_fault_cloud_init_fail(boot):
    container_id = boot("f1", HELLO_USER_DATA, env={"ASTROSTACK_FAULT": "cloud-init-fail"})
    with pytest.raises(vm.VMCloudInitFailed, match="cloud-init failed"):
        vm.wait_cloud_init(container_id, BOOT_TIMEOUT_S)
    assert vm.vm_exec(container_id, "test -e /etc/astrostack-test/ran")[0] == 1
    assert vm.vm_state(container_id).running


def test_fault_never_signal(boot):
    container_id = boot("f2", HELLO_USER_DATA, env={"ASTROSTACK_FAULT": "never-signal"})
    with pytest.raises(vm.VMWaitTimeout, match="status not-run"):
        vm.wait_cloud_init(container_id, 8)
    assert "cloud-init does not run" in vm.console_log(container_id)


def test_fault_die_after_boot(boot):
    container_id = boot("f3", HELLO_USER_DATA,
                        env={"ASTROSTACK_FAULT": "die-after-boot", "ASTROSTACK_FAULT_DELAY_S": "3"})
    assert vm.wait_running(container_id, BOOT_TIMEOUT_S).running
    state = _wait_stopped(container_id, deadline_s=30)
    assert (state.status, state.exit_code) == ("exited", 137)
    with pytest.raises(vm.VMError, match="is not running"):
        vm.vm_exec(container_id, "true")
    assert "fault injected: dying now" in vm.console_log(container_id)


def _wait_stopped(container_id: str, deadline_s: float) -> vm.VMState:
    deadline = time.monotonic() + deadline_s
    while (state := vm.vm_state(container_id)).running:
        assert time.monotonic() < deadline, f"VM still running after {deadline_s} s"
        time.sleep(0.5)
    return state
