"""A server through the running local cloud's APIs, on the container hypervisor.

Needs the control plane up (``astrostack local start``) with
``compute_driver = astrostack_localcloud.nova.driver.ContainerDriver``; skips
otherwise. As the user of cloud ``astrostack-local``: a network t2-*, its
router to ``public``, a keypair, a server of image ``debian-12`` that must
become ACTIVE, show cloud-init's run in its console log (metadata through
the network agent's proxy), show SHUTOFF after it powers itself off, and
leave nothing behind once deleted.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from astrostack_localcloud import naming

pytestmark = pytest.mark.functional

CLOUD = "astrostack-local"
IMAGE = "debian-12"
FLAVOR = "m1.small"
CIDR = "10.99.31.0/24"


def timeout_s() -> float:
    return float(os.environ.get("ASTROSTACK_TEST_TIMEOUT", "180"))


def wait_until(what: str, check, deadline_s: float | None = None, poll_s: float = 2.0):
    deadline = time.monotonic() + (deadline_s or timeout_s())
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {deadline_s or timeout_s():g} s")
        time.sleep(poll_s)
    return result


@pytest.fixture(scope="module")
def conn(test_project):
    """The session's user (conftest's test project) through clouds.yaml entry astrostack-local."""
    openstack = pytest.importorskip("openstack")
    try:
        connection = openstack.connect(cloud=CLOUD)
        hypervisors = list(openstack.connect(cloud=f"{CLOUD}-admin").compute.hypervisors(details=True))
    except Exception as exc:  # no clouds.yaml entry, no Keystone: no local cloud to test against
        pytest.skip(f"the local cloud does not answer: {exc}")
    if not any(h.hypervisor_type == "docker" for h in hypervisors):
        pytest.skip("nova-compute does not run the container driver")
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def network(conn):
    suffix = uuid.uuid4().hex[:6]
    made: list = []
    try:
        net = conn.network.create_network(name=f"t2-net-{suffix}")
        made.append(("network", net))
        subnet = conn.network.create_subnet(network_id=net.id, name=f"t2-subnet-{suffix}", ip_version=4,
                                            cidr=CIDR, enable_dhcp=True)
        public = conn.network.find_network("public")
        router = conn.network.create_router(name=f"t2-router-{suffix}", external_gateway_info={"network_id": public.id})
        made.append(("router", router))
        conn.network.add_interface_to_router(router, subnet_id=subnet.id)
        made.append(("interface", (router, subnet)))
        keypair = conn.compute.create_keypair(name=f"t2-key-{suffix}")
        made.append(("keypair", keypair))
        yield {"net": net, "keypair": keypair, "suffix": suffix}
    finally:
        for kind, thing in reversed(made):
            if kind == "interface":
                conn.network.remove_interface_from_router(thing[0], subnet_id=thing[1].id)
            elif kind == "router":
                conn.network.delete_router(thing, ignore_missing=True)
            elif kind == "network":
                for port in conn.network.ports(network_id=thing.id):
                    if port.device_owner.startswith("compute:"):
                        conn.network.delete_port(port, ignore_missing=True)
                conn.network.delete_network(thing, ignore_missing=True)
            elif kind == "keypair":
                conn.compute.delete_keypair(thing, ignore_missing=True)


def in_vm(server_id: str, script: str) -> str:
    done = subprocess.run(["docker", "exec", naming.instance_container(server_id), "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def test_a_server_boots_runs_cloud_init_powers_itself_off_and_is_deleted(conn, network):
    image = conn.image.find_image(IMAGE)
    flavor = conn.compute.find_flavor(FLAVOR)
    started = time.monotonic()
    server = conn.compute.create_server(
        name=f"t2-vm-{network['suffix']}", image_id=image.id, flavor_id=flavor.id,
        networks=[{"uuid": network["net"].id}], key_name=network["keypair"].name,
        user_data=_base64("#cloud-config\nruncmd:\n  - [sh, -c, 'echo t2 user-data ran > /root/t2-marker']\n"))
    try:
        server = conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], wait=timeout_s())
        active_s = time.monotonic() - started
        console = wait_until("cloud-init finished in the console log", lambda: (
            text := conn.compute.get_server_console_output(server)["output"]) and
            "Cloud-init v. 22.4.2 finished" in text and text, poll_s=3)
        cloud_init_s = time.monotonic() - started
        print(f"ACTIVE after {active_s:.1f} s, cloud-init finished after {cloud_init_s:.1f} s")

        assert "DataSourceOpenStack" in console
        assert in_vm(server.id, "cat /root/t2-marker").strip() == "t2 user-data ran"
        assert network["keypair"].public_key.split()[1] in in_vm(server.id, "cat /home/debian/.ssh/authorized_keys")

        _attach_a_volume_and_see_it(conn, server)
        _reboot_and_get_the_address_again(conn, server)

        in_vm(server.id, "(sleep 1; poweroff -f) >/dev/null 2>&1 &")
        off_at = time.monotonic()
        conn.compute.wait_for_server(server, status="SHUTOFF", failures=["ERROR"], interval=1, wait=60)
        print(f"SHUTOFF {time.monotonic() - off_at:.1f} s after the guest's poweroff")
    finally:
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, wait=timeout_s())

    leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={naming.LABEL_INSTANCE}={server.id}"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    assert leftovers == ""


def _attach_a_volume_and_see_it(conn, server) -> None:
    volume = conn.block_storage.create_volume(size=1, name=f"{server.name}-volume")
    try:
        conn.block_storage.wait_for_status(volume, "available", failures=["error"], wait=timeout_s())
        attachment = conn.compute.create_volume_attachment(server, volume_id=volume.id)
        conn.block_storage.wait_for_status(volume, "in-use", failures=["error"], wait=timeout_s())
        device = in_vm(server.id, f"readlink -f /dev/disk/by-id/virtio-{volume.id[:20]}").strip()
        assert (attachment.device, device) == ("/dev/vdb", "/dev/vdb")
        assert in_vm(server.id, "mkfs.ext4 -q /dev/vdb && echo formatted").strip() == "formatted"
        conn.compute.delete_volume_attachment(server, volume.id)
        conn.block_storage.wait_for_status(volume, "available", failures=["error"], wait=timeout_s())
        assert in_vm(server.id, "test -e /dev/vdb || echo gone").strip() == "gone"
    finally:
        conn.block_storage.delete_volume(volume, ignore_missing=True)


def _reboot_and_get_the_address_again(conn, server) -> None:
    address = next(a["addr"] for addresses in server.addresses.values() for a in addresses)
    booted = _started_at(server.id)
    conn.compute.reboot_server(server, "SOFT")
    # the API answers ACTIVE until the reboot begins: wait for the new boot, then for Nova
    wait_until("the VM booted again", lambda: _started_at(server.id) not in (booted, ""), poll_s=1)
    wait_until("the reboot finished in Nova", lambda: (
        current := conn.compute.get_server(server)).status == "ACTIVE" and current.task_state is None, poll_s=1)
    wait_until(f"{address} on eth0 after the reboot",
               lambda: f"inet {address}/" in in_vm(server.id, "ip -4 -o addr show dev eth0"))


def _started_at(server_id: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", naming.instance_container(server_id)],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def _base64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()
