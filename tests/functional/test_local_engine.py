"""The local Heat engine with the Neutron/Cinder/KeyPair stand-ins, end to end.

Real components only: heat-all, the Docker engine, curl. Each test creates its
own stack and deletes it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
import uuid

import pytest

from astrostack import paths
from astrostack.local import engine

pytestmark = pytest.mark.functional

LOCAL_ENVIRONMENT = paths.heat_templates_dir() / "local-environment.yaml"
TEST_SUPERNET = ipaddress.ip_network("10.231.0.0/16")


# --- helpers -------------------------------------------------------------------


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def free_cidr(docker_client) -> str:
    """The first /24 of the test range that no Docker network uses."""
    used = [ipaddress.ip_network(pool["Subnet"])
            for network in docker_client.networks.list(greedy=True)
            for pool in (network.attrs.get("IPAM") or {}).get("Config") or []
            if "Subnet" in pool and ":" not in pool["Subnet"]]
    for candidate in TEST_SUPERNET.subnets(new_prefix=24):
        if not any(candidate.overlaps(other) for other in used):
            return str(candidate)
    raise AssertionError(f"no free /24 left in {TEST_SUPERNET}")


def settled_stack(orchestration, stack_id: str, timeout: float, poll: float = 0.5):
    """Poll until the stack's status no longer ends in IN_PROGRESS (a rollback is
    over in under a second, so waiting for one failure state would miss it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack = orchestration.get_stack(stack_id)
        if not stack.status.endswith("IN_PROGRESS"):
            return stack
        time.sleep(poll)
    raise AssertionError(f"stack {stack_id} still IN_PROGRESS after {timeout:.0f} s")


def delete_and_wait(orchestration, stack, timeout: float) -> None:
    orchestration.delete_stack(stack)
    orchestration.wait_for_delete(stack, interval=0.5, wait=timeout)


def outputs(stack) -> dict:
    return {item["output_key"]: item["output_value"] for item in stack.outputs or []}


@pytest.fixture
def create_stack(local_cloud, wait_timeout):
    """Create stacks from test templates (plus the local environment); delete leftovers."""
    orchestration = local_cloud.orchestration
    created = []

    def create(template, name, *, environment=True, **create_args):
        attrs = orchestration.read_env_and_templates(
            template_file=str(template),
            environment_files=[str(LOCAL_ENVIRONMENT)] if environment else None)
        created.append(orchestration.create_stack(name=name, **attrs, **create_args).id)
        return created[-1]

    yield create
    for stack_id in created:
        stack = orchestration.find_stack(stack_id, ignore_missing=True)
        if stack is not None and stack.status != "DELETE_COMPLETE":
            delete_and_wait(orchestration, stack, wait_timeout)


# --- the engine itself -----------------------------------------------------------------


def test_start_is_idempotent_and_status_is_truthful(heat_engine):
    again = engine.start()
    assert again.pid == heat_engine.pid
    assert again.running and again.answering
    assert again.version == engine.HEAT_VERSION
    assert again.bind_address != "0.0.0.0"
    assert again.url == f"http://{again.bind_address}:{again.port}/v1/admin"
    assert again.config_path.stat().st_mode & 0o077 == 0
    assert "heat" in again.log_path.read_text()


# --- Neutron / Cinder / KeyPair stand-ins --------------------------------------------


def test_network_stack_creates_and_deletes_docker_objects(local_cloud, docker_client, create_stack,
                                                          templates_dir, wait_timeout):
    orchestration = local_cloud.orchestration
    cidr = free_cidr(docker_client)
    name = unique_name("netstack")
    stack_id = create_stack(templates_dir / "local_network.yaml", name,
                            parameters={"cidr": cidr}, tags="astrostack.cluster=ftest")

    stack = settled_stack(orchestration, stack_id, wait_timeout)
    assert stack.status == "CREATE_COMPLETE", stack.status_reason
    out = outputs(stack)
    resources = list(orchestration.resources(stack))
    assert {r.name: r.status for r in resources} == dict.fromkeys(
        ["net", "subnet", "router", "router_interface", "secgroup", "head_port", "worker_port",
         "head_fip", "worker_fip", "worker_fip_assoc", "data_volume", "data_attachment",
         "keypair"], "CREATE_COMPLETE")
    assert list(orchestration.stack_events(stack))

    # The subnet is a real Docker bridge network with the subnet's CIDR and labels.
    networks = docker_client.networks.list(
        filters={"label": f"astrostack.net_id={out['net_id']}"})
    assert [n.name for n in networks] == [f"astrostack-{name}-{out['net_id'][:8]}"]
    network = docker_client.networks.get(networks[0].id)
    assert network.attrs["Driver"] == "bridge"
    assert network.attrs["IPAM"]["Config"][0]["Subnet"] == cidr
    assert network.attrs["IPAM"]["Config"][0]["Gateway"] == out["subnet_gateway"]
    labels = network.attrs["Labels"]
    assert labels["astrostack.stack_id"] == stack_id
    assert labels["astrostack.cluster"] == "ftest"
    assert labels["astrostack.subnet_id"] == out["subnet_id"]
    assert out["net_subnets"] == [out["subnet_id"]]

    # Ports got distinct usable addresses of the CIDR, and floating IPs follow them.
    subnet = ipaddress.ip_network(cidr)
    ips = [ipaddress.ip_address(out["head_ip"]), ipaddress.ip_address(out["worker_ip"])]
    assert len(set(ips)) == 2
    reserved = {subnet.network_address, subnet.network_address + 1,
                ipaddress.ip_address(out["subnet_gateway"]), subnet.broadcast_address}
    assert all(ip in subnet and ip not in reserved for ip in ips)
    assert out["head_fixed_ips"] == [{"ip_address": out["head_ip"],
                                      "subnet_id": out["subnet_id"]}]
    assert out["worker_network_id"] == out["net_id"]
    assert out["head_mac"] == "02:42:" + ":".join(f"{b:02x}" for b in ips[0].packed)
    assert out["head_floating_ip"] == out["head_ip"]
    assert out["worker_floating_ip"] == out["worker_ip"]

    # The volume is a labelled Docker volume; the keypair is a usable key.
    volume = docker_client.volumes.get(out["volume_id"])
    assert volume.attrs["Labels"]["astrostack.stack_id"] == stack_id
    assert out["volume_status"] == "in-use"
    assert out["public_key"].startswith("ssh-ed25519 ")
    assert "OPENSSH PRIVATE KEY" in out["private_key"]

    delete_and_wait(orchestration, stack, wait_timeout)
    assert not docker_client.networks.list(
        filters={"label": f"astrostack.net_id={out['net_id']}"})
    assert not docker_client.volumes.list(
        filters={"label": f"astrostack.stack_id={stack_id}"})


def test_subnet_overlapping_a_docker_network_fails_with_its_name(local_cloud, docker_client,
                                                                 create_stack, templates_dir,
                                                                 wait_timeout):
    orchestration = local_cloud.orchestration
    cidr = free_cidr(docker_client)
    squatter = docker_client.networks.create(
        unique_name("astrostack-test-squatter"), driver="bridge",
        ipam={"Driver": "default", "Config": [{"Subnet": cidr}]})
    try:
        stack_id = create_stack(templates_dir / "local_network.yaml",
                                unique_name("clash"), parameters={"cidr": cidr},
                                disable_rollback=True)
        stack = settled_stack(orchestration, stack_id, wait_timeout)
        assert stack.status == "CREATE_FAILED"
        assert "overlaps" in stack.status_reason and squatter.name in stack.status_reason
        delete_and_wait(orchestration, stack, wait_timeout)
    finally:
        squatter.remove()


# --- wait conditions signalled from outside the engine ---------------------------------


def curl_cli_when_ready(orchestration, stack_id: str, timeout: float) -> str:
    """The handle's curl_cli output, once the handle exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack = orchestration.get_stack(stack_id)
        if not stack.status.endswith("IN_PROGRESS"):
            raise AssertionError(f"stack settled before the signal: {stack.status} "
                                 f"{stack.status_reason}")
        curl_cli = outputs(stack).get("curl_cli")
        if curl_cli:
            return curl_cli
        time.sleep(0.5)
    raise AssertionError(f"no curl_cli output within {timeout:.0f} s")


def test_wait_condition_completes_when_signalled_with_curl_cli(local_cloud, heat_engine,
                                                               create_stack, templates_dir,
                                                               wait_timeout):
    orchestration = local_cloud.orchestration
    stack_id = create_stack(templates_dir / "wait_condition.yaml",
                            unique_name("waitcond"), environment=False)
    curl_cli = curl_cli_when_ready(orchestration, stack_id, wait_timeout)
    assert f"http://{heat_engine.bind_address}:{heat_engine.port}/" in curl_cli

    body = json.dumps({"status": "SUCCESS", "id": "h1", "data": "x"})
    signal = subprocess.run(f"{curl_cli} --silent --fail --data-binary '{body}'",
                            shell=True, capture_output=True, text=True, timeout=60,
                            check=False)
    assert signal.returncode == 0, signal.stderr

    stack = settled_stack(orchestration, stack_id, wait_timeout)
    assert stack.status == "CREATE_COMPLETE", stack.status_reason
    assert json.loads(outputs(stack)["data"]) == {"h1": "x"}
    delete_and_wait(orchestration, stack, wait_timeout)
