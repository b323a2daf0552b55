"""Container-VMs of the local cloud's hypervisor, booted without the control plane.

The test network (t2_network.py) plays Neutron's agents (a bridge, DHCP, the
metadata service); the hypervisor (astrostack_localcloud.nova.hypervisor)
plays Nova's driver without Nova. Three VMs boot from astrostack/vm:latest:
an NFS server with a loop volume, a client in its export list, and an
outsider that is not. Everything is named t2* and removed at the end.

Needs root, the Docker engine and dnsmasq. ASTROSTACK_TEST_TIMEOUT bounds
every wait (default 180 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from t2_network import Guest, T2Network

from astrostack_localcloud import naming
from astrostack_localcloud.nova.events import EventFollower
from astrostack_localcloud.nova.hypervisor import Hypervisor, VMSpec
from astrostack_localcloud.nova.settings import Settings
from astrostack_localcloud.nova.state import AttachedVolume, Nic
from astrostack_localcloud.nova.volumes import by_id_link

pytestmark = pytest.mark.functional

IMAGE = "astrostack/vm:latest"
NETWORK_INDEX = 31
SECOND_NETWORK_INDEX = 33
MTU = 1450
POLL_S = 0.5


def timeout_s() -> float:
    return float(os.environ.get("ASTROSTACK_TEST_TIMEOUT", "180"))


def wait_until(what: str, check, deadline_s: float | None = None):
    """CHECK() until it returns something true; AssertionError naming WHAT at the deadline."""
    deadline = time.monotonic() + (deadline_s or timeout_s())
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {deadline_s or timeout_s():g} s")
        time.sleep(POLL_S)


@dataclass
class VM:
    spec: VMSpec
    ip: str
    booted_at: float = 0.0
    ready_after_s: float = 0.0

    @property
    def container(self) -> str:
        return naming.instance_container(self.spec.uuid)

    @property
    def nic(self) -> Nic:
        return self.spec.nics[0]


class Lab:
    """The hypervisor, its test network and the VMs booted on it."""

    def __init__(self, workdir: Path, docker_client, public_key: str):
        self.workdir, self.docker, self.public_key = workdir, docker_client, public_key
        self.network = T2Network(NETWORK_INDEX, workdir / "net", mtu=MTU)
        self.second_network = T2Network(SECOND_NETWORK_INDEX, workdir / "net2", mtu=MTU)
        self.settings = Settings(local_dir=workdir / "local", port_wired_timeout_s=10)
        self.hypervisor = Hypervisor(self.settings)
        self.events: list = []
        self.follower = EventFollower(self.hypervisor.docker, self._on_event, window_s=1.0)
        self.vms: dict[str, VM] = {}

    def _on_event(self, event) -> None:
        self.events.append(event)
        self.hypervisor.on_container_event(event)      # what the Nova driver does first

    def restart_hypervisor(self) -> None:
        """What a restart of nova-compute does to the hypervisor: a new one, from the state files."""
        self.hypervisor.close()
        self.hypervisor = Hypervisor(self.settings)
        self.hypervisor.resume()

    def wait_address(self, vm: VM) -> None:
        wait_until(f"{vm.spec.hostname} has {vm.ip} on eth0",
                   lambda: f"inet {vm.ip}/" in self.run(vm, "ip -4 -o addr show dev eth0", check=False)[1])

    @property
    def networks(self) -> tuple[T2Network, T2Network]:
        return self.network, self.second_network

    def define(self, hostname: str, host_number: int, network_count: int = 1) -> VM:
        networks = self.networks[:network_count]
        nics = tuple(Nic("t2" + uuid.uuid4().hex[:6] + "-" + str(uuid.uuid4())[9:], f"t2-network-{net.index}",
                         "fa:16:3e:%02x:%02x:%02x" % (net.index, host_number, os.getpid() % 256), MTU,
                         (net.address(host_number),), bridge_name=net.bridge) for net in networks)
        spec = VMSpec(uuid=str(uuid.uuid4()), name=f"instance-{hostname}", hostname=hostname, image=IMAGE,
                      nics=nics, memory_mb=1024)
        files = self._metadata(spec)
        for net, nic in zip(networks, nics):
            net.add_guest(Guest(nic.mac, nic.fixed_ips[0], hostname, files))
        self.vms[hostname] = VM(spec, nics[0].fixed_ips[0])
        return self.vms[hostname]

    def _metadata(self, spec: VMSpec) -> dict:
        meta = {"uuid": spec.uuid, "name": spec.hostname, "hostname": spec.hostname, "availability_zone": "nova",
                "launch_index": 0, "project_id": "t2", "public_keys": {"t2-key": self.public_key},
                "keys": [{"name": "t2-key", "type": "ssh", "data": self.public_key}]}
        network = {"links": [{"id": nic.tap, "type": "bridge", "ethernet_mac_address": nic.mac, "mtu": MTU,
                              "vif_id": nic.port_id} for nic in spec.nics],
                   "networks": [{"id": f"network{index}", "type": "ipv4_dhcp", "link": nic.tap,
                                 "network_id": nic.network_id} for index, nic in enumerate(spec.nics)],
                   "services": []}
        user_data = ("#cloud-config\nruncmd:\n"
                     f"  - [sh, -c, 'echo user-data of {spec.hostname} ran > /root/t2-user-data']\n")
        return {"meta_data.json": meta, "network_data.json": network, "user_data": user_data}

    def boot_all(self) -> None:
        ports = self.settings.ports_dir
        ports.mkdir(parents=True, exist_ok=True)
        for nic in (nic for vm in self.vms.values() for nic in vm.spec.nics):   # what the network agent writes
            (ports / nic.port_id).write_text(json.dumps({"mac": nic.mac, "ips": list(nic.fixed_ips)}))
        for network in self.networks:
            network.serve()
        self.follower.start()
        for vm in self.vms.values():
            vm.booted_at = time.monotonic()
            self.hypervisor.spawn(vm.spec)
        for vm in self.vms.values():
            wait_until(f"cloud-init done in {vm.spec.hostname}", lambda vm=vm: self.cloud_init_done(vm))
            vm.ready_after_s = time.monotonic() - vm.booted_at

    def cloud_init_done(self, vm: VM) -> bool:
        code, output = self.run(vm, "cloud-init status 2>/dev/null", check=False)
        if "error" in output:
            raise AssertionError(f"cloud-init failed in {vm.spec.hostname}: {self.hypervisor.console(vm.spec.uuid)[-3000:]}")
        return "done" in output

    def run(self, vm: VM, script: str, check: bool = True, seconds: float = 60) -> tuple[int, str]:
        """SCRIPT in VM (as root, through docker exec); its exit status and output."""
        container = self.docker.containers.get(vm.container)
        code, output = container.exec_run(["timeout", str(int(seconds)), "sh", "-c", script])
        text = (output or b"").decode(errors="replace")
        if check and code != 0:
            raise AssertionError(f"in {vm.spec.hostname}: {script!r} exited {code}: {text}")
        return code, text

    def close(self) -> None:
        for vm in self.vms.values():
            self.hypervisor.destroy(vm.spec.uuid)
        if self.follower._thread.is_alive():
            self.follower.stop()
        self.hypervisor.close()
        for network in self.networks:
            network.close()


def sweep_stale_t2_vms(docker_client) -> None:
    """Containers and volumes a crashed earlier run left (their hostnames start with t2-)."""
    for container in docker_client.containers.list(all=True, filters={"label": naming.LABEL_INSTANCE}):
        if container.labels.get(naming.LABEL_HOSTNAME, "").startswith("t2-"):
            volume = naming.instance_docker_volume(container.labels[naming.LABEL_INSTANCE])
            container.remove(force=True, v=True)
            for stale in docker_client.volumes.list(filters={"name": volume}):
                stale.remove(force=True)


@pytest.fixture(scope="module")
def lab(docker_client, tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("dnsmasq") is None:
        pytest.skip("needs root and dnsmasq")
    from astrostack import images

    if not images.built_from_current_recipe("vm"):
        images.ensure_base_image(progress=print)
        images.build("vm", progress=print)
    sweep_stale_t2_vms(docker_client)
    workdir = tmp_path_factory.mktemp("t2-vm")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "t2-key", "-f", str(workdir / "key")],
                   check=True, timeout=30)
    lab = Lab(workdir, docker_client, (workdir / "key.pub").read_text().strip())
    for network in lab.networks:
        network.open()
    try:
        lab.define("t2-nfs", 10)
        lab.define("t2-client", 11)
        lab.define("t2-outsider", 12)
        lab.define("t2-two-nics", 13, network_count=2)
        lab.boot_all()
        for vm in lab.vms.values():
            print(f"{vm.spec.hostname}: cloud-init done {vm.ready_after_s:.1f} s after spawn")
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def nfs_volume(lab):
    """A 256 MiB volume file attached to the NFS server at /dev/vdb, formatted and mounted on /export."""
    volume_id = str(uuid.uuid4())
    path = lab.workdir / f"volume-{volume_id}"
    with path.open("wb") as sparse:
        sparse.truncate(256 * 1024 ** 2)
    volume = lab.hypervisor.attach_volume(lab.vms["t2-nfs"].spec.uuid, AttachedVolume(volume_id, str(path), "/dev/vdb"))
    server = lab.vms["t2-nfs"]
    lab.run(server, f"mkfs.ext4 -q -L astroshare {by_id_link(volume_id)} && mkdir -p /export && "
                    f"echo \"UUID=$(blkid -s UUID -o value /dev/vdb) /export ext4 defaults,nofail 0 2\" >> /etc/fstab"
                    f" && mount /export")
    return volume


@pytest.fixture(scope="module")
def exported(lab, nfs_volume):
    """/export/share exported read-write to the client only, /export/pub read-only to the subnet."""
    server, client = lab.vms["t2-nfs"], lab.vms["t2-client"]
    lab.run(server, "mkdir -p /export/share /export/pub /etc/exports.d && echo from-the-server > /export/share/s && "
                    "echo public > /export/pub/p && "
                    f"printf '%s\\n' '/export/share {client.ip}(rw,sync,no_subtree_check,no_root_squash)' "
                    f"'/export/pub {lab.network.cidr}(ro,sync)' > /etc/exports.d/t2.exports && "
                    "systemctl restart nfs-server && exportfs -ra")
    return server


# --- a cloud VM ---------------------------------------------------------------------------------


def test_systemd_is_pid_1_and_the_system_is_running(lab):
    for vm in lab.vms.values():
        _, output = lab.run(vm, "cat /proc/1/comm; systemctl is-system-running", check=False)
        assert output.split() == ["systemd", "running"], f"{vm.spec.hostname}: {output}"


def test_cloud_init_ran_the_user_data_through_the_openstack_datasource(lab):
    vm = lab.vms["t2-nfs"]

    _, cloud_name = lab.run(vm, "cloud-init query v1.cloud_name")
    _, status = lab.run(vm, "cat /run/cloud-init/status.json")
    _, marker = lab.run(vm, "cat /root/t2-user-data")

    assert cloud_name.strip() == "openstack"
    assert json.loads(status)["v1"]["datasource"].startswith("DataSourceOpenStack")
    assert marker.strip() == "user-data of t2-nfs ran"
    assert "GET /openstack" in lab.network.log("metadata.log")


def test_eth0_got_its_dhcp_address_and_the_network_mtu(lab):
    for vm in lab.vms.values():
        _, address = lab.run(vm, "ip -4 -o addr show dev eth0")
        _, mtu = lab.run(vm, "cat /sys/class/net/eth0/mtu")
        _, mac = lab.run(vm, "cat /sys/class/net/eth0/address")
        assert f"inet {vm.ip}/24" in address and "dynamic" in address, address
        assert (mtu.strip(), mac.strip()) == (str(MTU), vm.nic.mac)


def test_a_vm_with_two_vifs_gets_eth0_and_eth1_in_order_each_by_dhcp(lab):
    vm = lab.vms["t2-two-nics"]

    for index, nic in enumerate(vm.spec.nics):
        _, address = lab.run(vm, f"ip -4 -o addr show dev eth{index}; cat /sys/class/net/eth{index}/address")
        assert f"inet {nic.fixed_ips[0]}/24" in address and nic.mac in address, address


def test_the_default_user_has_the_key_and_passwordless_sudo(lab):
    vm = lab.vms["t2-client"]

    _, keys = lab.run(vm, "cat /home/debian/.ssh/authorized_keys")
    _, whoami = lab.run(vm, "su - debian -c 'sudo -n whoami'")

    assert lab.public_key in keys
    assert whoami.strip() == "root"


def test_nothing_in_the_vm_says_it_is_a_local_cloud(lab):
    code, _ = lab.run(lab.vms["t2-client"], "test -e /etc/astrostack/local-cloud", check=False)

    assert code != 0


def test_docker_is_installed_but_not_started(lab):
    _, state = lab.run(lab.vms["t2-client"], "systemctl is-enabled docker; systemctl is-active docker", check=False)

    assert state.split() == ["disabled", "inactive"]


def test_the_console_shows_systemd_and_cloud_init(lab):
    console = lab.hypervisor.console(lab.vms["t2-nfs"].spec.uuid)

    assert "Reached target" in console and "Multi-User System" in console
    assert "Cloud-init v. 22.4.2 finished" in console and "DataSourceOpenStackLocal" in console


# --- volumes ------------------------------------------------------------------------------------


def test_the_volume_appears_by_id_and_holds_a_mounted_file_system(lab, nfs_volume):
    server = lab.vms["t2-nfs"]

    _, device = lab.run(server, f"readlink -f {by_id_link(nfs_volume.volume_id)}")
    _, mounted = lab.run(server, "findmnt -n -o SOURCE,FSTYPE /export")
    lab.run(server, "echo written > /export/probe && sync")

    assert device.strip() == "/dev/vdb"
    assert mounted.split() == ["/dev/vdb", "ext4"]
    assert nfs_volume.loop_device.startswith("/dev/loop")


# --- the NFS substitute -------------------------------------------------------------------------


def test_a_client_in_the_export_list_mounts_with_plain_mount_and_files_go_both_ways(lab, exported):
    client = lab.vms["t2-client"]

    _, output = lab.run(client, f"mkdir -p /mnt/share && mount -t nfs4 {exported.ip}:/export/share /mnt/share 2>&1")
    _, seen = lab.run(client, "cat /mnt/share/s && echo from-the-client > /mnt/share/c")
    _, back = lab.run(exported, "cat /export/share/c")

    assert "substitute" in output
    assert (seen.strip(), back.strip()) == ("from-the-server", "from-the-client")


def test_a_read_only_export_refuses_writes(lab, exported):
    client = lab.vms["t2-client"]

    lab.run(client, f"mkdir -p /mnt/pub && mount -t nfs4 {exported.ip}:/export/pub /mnt/pub")
    code, output = lab.run(client, "cat /mnt/pub/p && touch /mnt/pub/x", check=False)

    assert code != 0 and "Read-only file system" in output


def test_a_client_outside_the_export_list_is_refused_like_mount_nfs(lab, exported):
    outsider = lab.vms["t2-outsider"]

    code, output = lab.run(outsider, f"mkdir -p /mnt/share && mount -t nfs4 {exported.ip}:/export/share /mnt/share",
                           check=False)

    assert code == 32
    assert f"access denied by server while mounting {exported.ip}:/export/share" in output


def test_a_symlink_in_an_export_does_not_lead_out_of_it(lab, exported):
    client = lab.vms["t2-client"]
    lab.run(exported, "ln -sfn /etc /export/share/escape")

    code, output = lab.run(client, f"mkdir -p /mnt/escape && mount -t nfs4 {exported.ip}:/export/share/escape "
                                   "/mnt/escape", check=False)

    assert code == 32 and "access denied" in output


def test_the_mount_fails_when_the_servers_port_2049_is_blocked(lab, exported):
    client = lab.vms["t2-client"]
    lab.run(exported, "iptables -I INPUT -p tcp --dport 2049 -j DROP")
    try:
        code, output = lab.run(client, f"mkdir -p /mnt/blocked && mount -t nfs4 -o retry=0 "
                                       f"{exported.ip}:/export/share /mnt/blocked", check=False)
    finally:
        lab.run(exported, "iptables -D INPUT -p tcp --dport 2049 -j DROP")

    assert code == 32 and "Connection timed out" in output


def test_an_fstab_entry_of_the_products_form_mounts(lab, exported):
    client = lab.vms["t2-client"]

    lab.run(client, f"mkdir -p /mnt/fstab && echo '{exported.ip}:/export/share /mnt/fstab nfs4 "
                    "defaults,_netdev,hard,timeo=600,lookupcache=positive 0 0' >> /etc/fstab && mount /mnt/fstab && test -s /mnt/fstab/s")


# --- restarts -------------------------------------------------------------------------------------


def test_a_restarted_hypervisor_finds_its_vms_and_serves_their_channels(lab, exported):
    client = lab.vms["t2-client"]

    lab.restart_hypervisor()

    assert {vm.spec.uuid for vm in lab.vms.values()} <= set(lab.hypervisor.instance_uuids())
    lab.run(client, f"mkdir -p /mnt/again && mount -t nfs4 {exported.ip}:/export/share /mnt/again && "
                    "test -s /mnt/again/s")


def test_power_off_and_on_plugs_the_vif_again_and_dhcp_answers(lab):
    client = lab.vms["t2-client"]

    lab.hypervisor.power_off(client.spec.uuid)
    off = lab.hypervisor.container_state(client.spec.uuid)
    lab.hypervisor.power_on(client.spec.uuid)
    lab.wait_address(client)

    assert off.status == "exited"
    assert lab.run(client, "cat /sys/class/net/eth0/mtu")[1].strip() == str(MTU)


def test_the_nfs_server_reboots_with_its_volume_mounted_from_fstab_and_serves_again(lab, exported):
    server, client = exported, lab.vms["t2-client"]

    lab.hypervisor.reboot(server.spec.uuid)
    lab.wait_address(server)
    wait_until("nfs-server active after the reboot",
               lambda: lab.run(server, "systemctl is-active nfs-server", check=False)[1].strip() == "active")
    _, mounted = lab.run(server, "findmnt -n -o SOURCE /export")

    assert mounted.strip() == "/dev/vdb"
    lab.run(client, f"mkdir -p /mnt/after && mount -t nfs4 {exported.ip}:/export/share /mnt/after && "
                    "test -s /mnt/after/c")


def test_a_reboot_inside_the_vm_boots_it_again(lab):
    client = lab.vms["t2-client"]
    before = lab.hypervisor.container_state(client.spec.uuid).pid

    lab.run(client, "(sleep 1; systemctl reboot) >/dev/null 2>&1 &")
    wait_until("the client running again with a new PID 1",
               lambda: (s := lab.hypervisor.container_state(client.spec.uuid)) and s.running and s.pid != before)
    lab.wait_address(client)

    assert any(e.instance_uuid == client.spec.uuid and e.action == "die" and e.exit_code == 129 for e in lab.events)


# --- power --------------------------------------------------------------------------------------


def test_poweroff_inside_the_vm_stops_its_container(lab):
    outsider = lab.vms["t2-outsider"]

    lab.run(outsider, "(sleep 1; poweroff -f) >/dev/null 2>&1 &")
    stopped = wait_until("the outsider's container stopped",
                         lambda: (s := lab.hypervisor.container_state(outsider.spec.uuid)) and not s.running and s,
                         deadline_s=30)

    assert stopped.status == "exited"
    wait_until("a die event", lambda: any(e.instance_uuid == outsider.spec.uuid and e.action == "die"
                                          for e in lab.events), deadline_s=10)
    # the kernel tears a dead namespace (and the veth in it) down later, in a work queue
    # of its own (10 s was too short with another test's VMs booting)
    wait_until("the tap gone with the namespace", lambda: not Path(f"/sys/class/net/{outsider.nic.tap}").exists(),
               deadline_s=60)


def test_destroy_leaves_nothing(lab, nfs_volume):
    for vm in lab.vms.values():
        lab.hypervisor.destroy(vm.spec.uuid)
        lab.hypervisor.destroy(vm.spec.uuid)          # idempotent

    uuids = {vm.spec.uuid for vm in lab.vms.values()}
    containers = [c for c in lab.docker.containers.list(all=True, filters={"label": naming.LABEL_INSTANCE})
                  if c.labels.get(naming.LABEL_INSTANCE) in uuids]
    volumes = [v.name for v in lab.docker.volumes.list() if any(u in v.name for u in uuids)]
    links = [name for vm in lab.vms.values() for nic in vm.spec.nics for name in (nic.tap, nic.staged)
             if Path(f"/sys/class/net/{name}").exists()]
    loops = subprocess.run(["losetup", "-j", nfs_volume.device_path], capture_output=True, text=True,
                           timeout=30).stdout
    assert (containers, volumes, links, loops) == ([], [], [], "")
    assert list(lab.settings.instances_dir.glob("*")) == []
    assert list(lab.settings.channel_dir.glob("*")) == []
