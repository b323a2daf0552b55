"""The pure parts of the local cloud's hypervisor: names, state files, volume nodes, waits, events."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from astrostack_localcloud import naming
from astrostack_localcloud.nova import containers, events, volumes
from astrostack_localcloud.nova.errors import HypervisorError, PortNotWired
from astrostack_localcloud.nova.state import AttachedVolume, InstanceState, Nic, ShareMount, StateStore
from astrostack_localcloud.nova.vifs import guest_nic_name, host_side_mac, wait_ports_wired

PORT = "5f0c9b2e-6d7a-4c1e-9a51-2b8e3f4d1c77"
NETWORK = "0d7e1c2b-3a4f-4b5c-8d9e-0f1a2b3c4d5e"
VOLUME = "8d3c6a2e-41b7-4f0a-9c3d-7e5b1a2f6c90"
UUID = "3b1f7c9e-2a4d-4e6f-8a0b-1c2d3e4f5a6b"


def a_state() -> InstanceState:
    return InstanceState(
        uuid=UUID, name="instance-0000000a", hostname="cluster-nfs", image=naming.glance_image_reference("img-1"),
        nics=(Nic(PORT, NETWORK, "fa:16:3e:00:00:01", 1450, ("10.0.0.5",)),), memory_mb=2048,
        volumes=(AttachedVolume(VOLUME, f"/var/lib/cinder/volume-{VOLUME}", "/dev/vdb", "/dev/loop3"),),
        exports_text="/export 10.0.0.0/24(rw)\n",
        share_mounts=(ShareMount("other-uuid", "/export", "/mnt/share", True),))


# --- names -------------------------------------------------------------------------------------


def test_linux_names_fit_ifnamsiz_and_follow_neutron():
    nic = a_state().nics[0]

    assert (nic.tap, nic.bridge, nic.staged) == ("tap5f0c9b2e-6d", "brq0d7e1c2b-3a", "vm5f0c9b2e-6d")
    assert all(len(name) <= 15 for name in (nic.tap, nic.bridge, nic.staged))
    assert Nic(PORT, NETWORK, "fa:16:3e:00:00:01", 1450, bridge_name="t2br0").bridge == "t2br0"


def test_container_volume_and_image_names():
    assert naming.instance_container(UUID) == f"nova-{UUID}"
    assert naming.instance_docker_volume(UUID) == f"nova-{UUID}-var-lib-docker"
    assert naming.glance_image_reference("abc") == "astrostack-local/glance:abc"


def test_guest_devices_are_named_as_on_kvm():
    assert guest_nic_name(0) == "eth0" and guest_nic_name(2) == "eth2"
    assert volumes.by_id_link(VOLUME) == "/dev/disk/by-id/virtio-8d3c6a2e-41b7-4f0a-9"
    assert host_side_mac("fa:16:3e:00:00:01") == "fe:16:3e:00:00:01"


@pytest.mark.parametrize(("mountpoint", "node"), [("/dev/vdb", "/dev/vdb"), ("vdc", "/dev/vdc")])
def test_nova_mountpoints_become_guest_nodes(mountpoint, node):
    assert volumes.guest_node(mountpoint) == node


@pytest.mark.parametrize("mountpoint", ["/dev/../etc/passwd", "/dev/vdb; rm -rf /", ""])
def test_a_mountpoint_that_is_not_a_device_name_is_refused(mountpoint):
    with pytest.raises(HypervisorError, match="not a device name"):
        volumes.guest_node(mountpoint)


# --- state files -------------------------------------------------------------------------------


def test_state_file_round_trip(tmp_path: Path):
    store = StateStore(tmp_path)
    state = a_state()

    store.save(state)

    assert store.load(UUID) == state
    assert json.loads(store.path(UUID).read_text())["version"] == 1
    assert [s.uuid for s in store.all()] == [UUID]
    assert store.find_by_fixed_ip("10.0.0.5") == state
    assert store.find_by_fixed_ip("10.0.0.6") is None


def test_state_updates_and_deletion(tmp_path: Path):
    store = StateStore(tmp_path)
    store.save(a_state())

    store.update(UUID, lambda s: s.without_volume("/dev/vdb").without_shares_from("other-uuid"))
    changed = store.load(UUID)
    store.delete(UUID)

    assert changed.volumes == () and changed.share_mounts == ()
    assert store.load(UUID) is None and store.all() == []
    assert store.update(UUID, lambda s: s) is None
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unreadable_state_file_is_named(tmp_path: Path):
    (tmp_path / f"{UUID}.json").write_text("{half")

    with pytest.raises(HypervisorError, match=f"{UUID}.json is unreadable"):
        StateStore(tmp_path).load(UUID)


def test_volumes_by_mountpoint():
    state = a_state()
    replaced = state.with_volume(AttachedVolume("v2", "/f2", "/dev/vdb"))

    assert state.volume_at("/dev/vdb").volume_id == VOLUME
    assert [v.volume_id for v in replaced.volumes] == ["v2"]


# --- the tree a client gets --------------------------------------------------------------------


def test_a_source_must_stay_inside_its_export(tmp_path: Path):
    from astrostack_localcloud.nova import mountns

    (tmp_path / "export" / "data").mkdir(parents=True)
    (tmp_path / "export" / "out").symlink_to(tmp_path)

    assert mountns.resolve_within(str(tmp_path / "export" / "data"), str(tmp_path / "export")) == str(
        tmp_path / "export" / "data")
    with pytest.raises(mountns.MountNsError) as outside:
        mountns.resolve_within(str(tmp_path / "export" / "out"), str(tmp_path / "export"))
    assert outside.value.exit_code == mountns.EXIT_OUTSIDE_EXPORT


# --- volumes -----------------------------------------------------------------------------------


def test_connection_info_of_the_cinder_driver():
    info = {"driver_volume_type": "astrostack_file", "data": {"device_path": "/v/volume-1", "volume_id": VOLUME}}

    assert volumes.volume_from_connection_info(info, "/dev/vdb") == AttachedVolume(VOLUME, "/v/volume-1", "/dev/vdb")
    with pytest.raises(HypervisorError, match="iscsi"):
        volumes.volume_from_connection_info({"driver_volume_type": "iscsi", "data": {}}, "/dev/vdb")


def test_guest_links_are_udevs():
    volume = AttachedVolume(VOLUME, "/f", "/dev/vdb", "/dev/loop3")

    assert volumes.guest_links(volume, {}) == [volumes.by_id_link(VOLUME)]
    assert volumes.guest_links(volume, {"UUID": "1234", "LABEL": "astroshare"}) == [
        volumes.by_id_link(VOLUME), "/dev/disk/by-uuid/1234", "/dev/disk/by-label/astroshare"]


def test_the_install_script_makes_the_node_and_its_links():
    script = volumes.install_script("/dev/vdb", 7, 3, ["/dev/disk/by-id/virtio-x"])

    assert "mknod -m 0660 /dev/vdb b 7 3" in script.splitlines()
    assert "ln -sfn /dev/vdb /dev/disk/by-id/virtio-x" in script.splitlines()


def test_losetup_and_blkid_output():
    assert volumes.parse_losetup_j("/dev/loop3: [2049]:1234 (/v/volume-1)\n/dev/loop7: []: (/v/volume-1)\n") == [
        "/dev/loop3", "/dev/loop7"]
    assert volumes.parse_blkid_export("DEVNAME=/dev/loop3\nUUID=abc\nTYPE=ext4\n")["UUID"] == "abc"


# --- the container -----------------------------------------------------------------------------


def test_the_container_is_a_machine_not_a_privileged_container(tmp_path: Path):
    spec = containers.ContainerSpec(UUID, "instance-0000000a", "cluster-nfs", "img", 2, tmp_path,
                                    hypervisor="/srv/local", memory_mb=2048)

    args = containers.host_config_args(spec)

    assert args["cap_add"] == ["ALL"] and args["cap_drop"] == ["SYS_RESOURCE"] and "privileged" not in args
    assert args["cgroupns"] == "private" and args["network_mode"] == "none" and not args["init"]
    assert set(args["tmpfs"]) == {"/run", "/run/lock"}
    assert args["binds"][naming.instance_docker_volume(UUID)]["bind"] == "/var/lib/docker"
    assert args["binds"][str(tmp_path)]["bind"] == "/run/astrostack-hv"
    assert args["mem_limit"] == "2048m"
    assert spec.environment == {"product_name": "OpenStack Nova", "ASTROSTACK_HV_NICS": "2",
                                "ASTROSTACK_HV_NIC_WAIT_S": "120"}
    assert spec.labels[naming.LABEL_INSTANCE] == UUID and spec.labels[naming.LABEL_HYPERVISOR] == "/srv/local"


def test_no_memory_limit_when_none_is_asked(tmp_path: Path):
    spec = containers.ContainerSpec(UUID, "i", "h", "img", 0, tmp_path)

    assert "mem_limit" not in containers.host_config_args(spec)


# --- waits and events --------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_port_wait_ends_when_the_agent_has_written_every_port(tmp_path: Path):
    clock = FakeClock()
    (tmp_path / "p1").write_text("{}")

    def agent_writes_p2_later(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 3:
            (tmp_path / "p2").write_text("{}")

    wait_ports_wired(["p1", "p2"], tmp_path, 60, 1, sleep=agent_writes_p2_later, clock=clock)

    assert clock.now == 3


def test_the_port_wait_names_the_missing_ports_at_its_deadline(tmp_path: Path):
    clock = FakeClock()

    with pytest.raises(PortNotWired, match="p2"):
        wait_ports_wired(["p2"], tmp_path, 5, 1, sleep=clock.sleep, clock=clock)
    assert clock.now == 5


def test_a_zero_timeout_does_not_wait(tmp_path: Path):
    wait_ports_wired(["never"], tmp_path, 0, sleep=pytest.fail)


def test_docker_events_of_servers_are_recognised():
    die = {"Type": "container", "Action": "die", "timeNano": 12,
           "Actor": {"Attributes": {naming.LABEL_INSTANCE: UUID, naming.LABEL_HYPERVISOR: "/srv/local",
                                    "exitCode": "130"}}}
    other = {"Type": "container", "Action": "start", "Actor": {"Attributes": {"name": "not-a-server"}}}

    assert events.parse_event(die) == events.ContainerEvent(UUID, "die", 130, 12, "/srv/local")
    assert events.parse_event(other) is None


def test_a_hypervisor_owns_its_labelled_servers_and_unlabelled_ones_it_has_state_for(tmp_path: Path):
    from astrostack_localcloud.nova.hypervisor import Hypervisor
    from astrostack_localcloud.nova.settings import Settings

    hypervisor = Hypervisor(Settings(local_dir=tmp_path))
    hypervisor.store.save(a_state())

    assert hypervisor.owns("any", str(tmp_path))
    assert not hypervisor.owns(UUID, "/another/hypervisor")
    assert hypervisor.owns(UUID, "") and not hypervisor.owns("unknown", "")


# --- the image cache ---------------------------------------------------------------------------


class CachedImages:
    """The two calls of the Docker engine that pruning makes, on a set of tags."""

    def __init__(self, *image_ids: str):
        self.tags = {naming.glance_image_reference(image_id) for image_id in image_ids}

    def references(self, repository: str) -> list[str]:
        return sorted(tag for tag in self.tags if tag.startswith(repository + ":"))

    def remove_image(self, reference: str) -> None:
        self.tags.discard(reference)


def test_prune_removes_only_images_unused_for_long_enough(tmp_path: Path):
    from astrostack_localcloud.nova.glance_images import ImageCache

    docker = CachedImages("in-use", "old", "recent", "unmarked")
    cache = ImageCache(docker, tmp_path)
    now = 10_000.0
    for image_id, last_used in (("in-use", 0), ("old", 0), ("recent", now - 10)):
        (tmp_path / f"{image_id}.used").touch()
        os.utime(tmp_path / f"{image_id}.used", (last_used, last_used))

    removed = cache.prune({"in-use"}, min_age_s=3600, clock=lambda: now)

    assert removed == ["old"]
    assert docker.tags == {naming.glance_image_reference(i) for i in ("in-use", "recent", "unmarked")}
    assert (tmp_path / "unmarked.used").exists() and not (tmp_path / "old.used").exists()
