"""Drive ContainerDriver through Nova's own objects, without the control plane (run by the OpenStack venv).

    OPENSTACK_PYTHON nova_driver_probe.py WORKDIR

Nova's Instance, Flavor, ImageMeta and network model objects, Nova's fake
VirtAPI and Nova's image download (replaced by ``docker save``, Glance being
absent) go through the real driver: spawn, get_info, the console, a volume
through Cinder's connection_info, power off/on, reboot, a guest's own
poweroff seen as a lifecycle event, a second driver instance (a restarted
nova-compute) finding the server, destroy. The network is
tests/functional/t2_network.py's. Prints one JSON object of findings; the
pytest test (test_nova_driver.py) asserts on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from t2_network import Guest, T2Network  # noqa: E402

from astrostack_localcloud import naming  # noqa: E402

NETWORK_INDEX = 32
MTU = 1450
IMAGE = "astrostack/vm:latest"
DEADLINE_S = 180


def wait_until(what, check, deadline_s=DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {deadline_s} s")
        time.sleep(0.5)
    return result


def in_vm(instance_uuid, script):
    done = subprocess.run(["docker", "exec", naming.instance_container(instance_uuid), "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def main(workdir: Path) -> dict:
    from nova import context as nova_context
    from nova import exception, objects
    from nova.compute import power_state
    from nova.conf import CONF
    from nova.network import model as network_model
    from nova.virt import event as virtevent
    from nova.virt import fake

    from astrostack_localcloud.nova import driver as driver_module

    objects.register_all()
    CONF([], project="nova", default_config_files=[])
    CONF.set_override("host", "t2-compute")
    CONF.set_override("state_path", str(workdir / "nova-state"))
    CONF.set_override("local_dir", str(workdir / "local"), group="astrostack_local")
    CONF.set_override("port_wired_timeout", 10, group="astrostack_local")

    def fetch_from_docker(context, image_id, path, trusted_certs=None):
        subprocess.run(["docker", "save", "-o", path, IMAGE], check=True, timeout=600)
    driver_module.images.fetch = fetch_from_docker           # Nova's Glance download, Glance being absent

    findings: dict = {"steps": []}
    events: list = []
    instance_uuid, image_id = str(uuid.uuid4()), "t2-" + uuid.uuid4().hex[:12]
    port_id, network_id = "t2" + str(uuid.uuid4())[2:], "t2" + str(uuid.uuid4())[2:]
    network = T2Network(NETWORK_INDEX, workdir / "net", mtu=MTU, bridge_name=naming.network_bridge(network_id))
    mac, ip = "fa:16:3e:32:00:10", network.address(10)
    volume_file = workdir / "volume-t2"
    driver = None

    def step(name, **facts):
        findings["steps"].append(name)
        findings.update(facts)

    try:
        network.open()
        tap = naming.tap_device(port_id)
        meta = {"uuid": instance_uuid, "hostname": "t2-nova", "name": "t2-nova", "public_keys": {}}
        net_data = {"links": [{"id": tap, "type": "other", "ethernet_mac_address": mac, "mtu": MTU}],
                    "networks": [{"id": "network0", "type": "ipv4_dhcp", "link": tap}], "services": []}
        network.add_guest(Guest(mac, ip, "t2-nova", {"meta_data.json": meta, "network_data.json": net_data,
                                                      "user_data": "#cloud-config\n{}\n"}))
        network.serve()
        ports = workdir / "local" / "net" / "ports"
        ports.mkdir(parents=True)
        (ports / port_id).write_text("{}")

        driver = driver_module.ContainerDriver(fake.FakeVirtAPI())
        driver.register_event_listener(events.append)
        driver.init_host("t2-compute")
        context = nova_context.get_admin_context()
        instance = objects.Instance(context=context, uuid=instance_uuid, id=3201, hostname="t2-nova",
                                    flavor=objects.Flavor(memory_mb=1024, vcpus=1, root_gb=1, ephemeral_gb=0,
                                                          swap=0, extra_specs={}))
        image_meta = objects.ImageMeta.from_dict({"id": image_id, "container_format": "docker",
                                                  "disk_format": "raw", "properties": {}})
        subnet = network_model.Subnet(cidr=network.cidr, ips=[network_model.FixedIP(address=ip)])
        vif = network_model.VIF(id=port_id, address=mac, type="other", active=True,
                                network=network_model.Network(id=network_id, subnets=[subnet], meta={"mtu": MTU}))
        network_info = network_model.NetworkInfo([vif])

        started = time.monotonic()
        driver.spawn(context, instance, image_meta, [], None, {}, network_info)
        spawned_s = time.monotonic() - started
        wait_until("cloud-init done", lambda: "done" in in_vm(instance_uuid, "cloud-init status")[1])
        step("spawn", spawn_s=round(spawned_s, 1), cloud_init_done_s=round(time.monotonic() - started, 1),
             image_cached=driver.hypervisor.docker.image_exists(naming.glance_image_reference(image_id)),
             info_after_spawn=driver.get_info(instance).state == power_state.RUNNING,
             listed=instance_uuid in driver.list_instance_uuids() and instance.name in driver.list_instances(),
             address=in_vm(instance_uuid, "ip -4 -o addr show eth0")[1],
             datasource=in_vm(instance_uuid, "cloud-init query v1.cloud_name")[1].strip())
        console = driver.get_console_output(context, instance).decode(errors="replace")
        step("console", console_has_cloud_init="Cloud-init v. 22.4.2 finished" in console,
             console_bytes=len(console))

        with volume_file.open("wb") as sparse:
            sparse.truncate(128 * 1024 ** 2)
        volume_id = str(uuid.uuid4())
        connection_info = {"driver_volume_type": "astrostack_file",
                           "data": {"device_path": str(volume_file), "volume_id": volume_id}}
        driver.attach_volume(context, connection_info, instance, "/dev/vdb")
        code, _ = in_vm(instance_uuid, f"test -b /dev/disk/by-id/virtio-{volume_id[:20]} && mkfs.ext4 -q /dev/vdb")
        driver.detach_volume(context, connection_info, instance, "/dev/vdb")
        step("volume", volume_attached=code == 0, volume_detached=in_vm(instance_uuid, "test -e /dev/vdb")[0] != 0,
             loops_after_detach=subprocess.run(["losetup", "-j", str(volume_file)], capture_output=True,
                                               text=True, timeout=30).stdout)

        driver.power_off(instance, timeout=10)
        off = driver.get_info(instance).state
        driver.power_on(context, instance, network_info)
        wait_until("address after power on", lambda: f"inet {ip}/" in in_vm(instance_uuid, "ip -4 -o addr show eth0")[1])
        step("power", off_state=off == power_state.SHUTDOWN, on_state=driver.get_info(instance).state == power_state.RUNNING)

        driver.reboot(context, instance, network_info, "SOFT")
        wait_until("address after reboot", lambda: f"inet {ip}/" in in_vm(instance_uuid, "ip -4 -o addr show eth0")[1])
        step("reboot", rebooted=driver.get_info(instance).state == power_state.RUNNING)

        restarted = driver_module.ContainerDriver(fake.FakeVirtAPI())
        step("restart", found_after_restart=instance_uuid in restarted.list_instance_uuids()
             and restarted.get_info(instance).state == power_state.RUNNING)

        events.clear()
        in_vm(instance_uuid, "(sleep 1; poweroff -f) >/dev/null 2>&1 &")
        stopped_at = time.monotonic()
        wait_until("a STOPPED lifecycle event", lambda: any(
            isinstance(e, virtevent.LifecycleEvent) and e.get_instance_uuid() == instance_uuid
            and e.get_transition() == virtevent.EVENT_LIFECYCLE_STOPPED for e in events), deadline_s=30)
        step("guest poweroff", stopped_event_s=round(time.monotonic() - stopped_at, 1),
             state_after_poweroff=driver.get_info(instance).state == power_state.SHUTDOWN)

        driver.destroy(context, instance, network_info)
        driver.destroy(context, instance, network_info)
        try:
            driver.get_info(instance)
            gone = False
        except exception.InstanceNotFound:
            gone = True
        step("destroy", not_found_after_destroy=gone,
             leftovers=subprocess.run(["docker", "ps", "-aq", "--filter", f"label={naming.LABEL_INSTANCE}={instance_uuid}"],
                                      capture_output=True, text=True, timeout=30).stdout.strip(),
             tap_left=Path(f"/sys/class/net/{tap}").exists())

        CONF.set_override("remove_unused_original_minimum_age_seconds", 0, group="image_cache")
        driver.manage_image_cache(context, [])
        step("image cache", pruned=not driver.hypervisor.docker.image_exists(naming.glance_image_reference(image_id)))
    except Exception as exc:  # the test wants the finding, not a traceback on stderr only
        findings["error"] = f"{type(exc).__name__}: {exc}"
        findings["traceback"] = traceback.format_exc()
    finally:
        if driver is not None:
            driver.hypervisor.destroy(instance_uuid)
            driver.cleanup_host("t2-compute")
        subprocess.run(["docker", "rmi", naming.glance_image_reference(image_id)], capture_output=True, timeout=60)
        network.close()
    return findings


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
