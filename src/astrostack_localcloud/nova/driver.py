"""Nova virt driver of the local cloud: servers are systemd container-VMs.

    [DEFAULT] compute_driver = astrostack_localcloud.nova.driver.ContainerDriver
    [astrostack_local] local_dir = ~/.local/share/astrostack/local   (the options below)

Resource reporting and node identity are the fake driver's (a stable node
uuid, as ``fake.FakeDriverWithoutFakeNodes``) with this machine's real CPU,
memory and disk; instances, power state, consoles, VIFs and volumes are real
and live in Docker, the host's links and loop devices and the per-instance
state files, so a restarted nova-compute finds them again. All the work is
done by :class:`~.hypervisor.Hypervisor`; this module translates Nova's
objects and exceptions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nova import exception
from nova.compute import power_state
from nova.conf import CONF
from nova.objects import fields as obj_fields
from nova.virt import driver, fake, hardware, images
from nova.virt import event as virtevent
from oslo_config import cfg
from oslo_log import log as logging

from astrostack_localcloud import naming

from . import commands
from . import settings as settings_module
from .errors import HypervisorError, Missing, PortNotWired
from .events import ContainerEvent, EventFollower
from .glance_images import DOCKER_CONTAINER_FORMAT, ImageCache
from .hypervisor import Hypervisor, VMSpec
from .state import Nic
from .volumes import guest_node, volume_from_connection_info

LOG = logging.getLogger(__name__)
GROUP = "astrostack_local"
DEFAULT_MTU = 1500
ROOT_DEVICE = "/dev/vda"

OPTS = [
    cfg.StrOpt("local_dir", help="The local cloud's folder (LOCAL). Default: $ASTROSTACK_LOCAL_DIR, else "
                                 "$ASTROSTACK_HOME/local, else ~/.local/share/astrostack/local."),
    cfg.FloatOpt("port_wired_timeout", default=60.0, min=0,
                 help="Seconds to wait for the network agent's LOCAL/net/ports/<port id> before a server "
                      "boots; 0 does not wait. A timeout fails the spawn if vif_plugging_is_fatal."),
    cfg.FloatOpt("guest_nic_wait", default=120.0, min=1, help="Seconds a guest's boot shim waits for its NICs."),
    cfg.FloatOpt("docker_timeout", default=60.0, min=1, help="Timeout of every Docker API call."),
    cfg.FloatOpt("command_timeout", default=30.0, min=1, help="Timeout of every host command (ip, losetup)."),
    cfg.FloatOpt("stop_timeout", default=30.0, min=0, help="Seconds a clean shutdown may take before SIGKILL."),
    cfg.IntOpt("console_bytes", default=100 * 1024, min=1024, help="Bytes of console output returned."),
    cfg.IntOpt("min_memory_limit_mb", default=512, min=0,
               help="Flavors with less RAM run without a memory limit (a VM needs about 200 MiB to boot)."),
    cfg.BoolOpt("follow_events", default=True, help="Report servers that stop or start by themselves."),
]
CONF.register_opts(OPTS, group=GROUP)

POWER_STATES = {"running": power_state.RUNNING, "restarting": power_state.RUNNING, "paused": power_state.PAUSED,
                "created": power_state.SHUTDOWN, "exited": power_state.SHUTDOWN, "removing": power_state.SHUTDOWN,
                "dead": power_state.CRASHED}
LIFECYCLE = {"start": virtevent.EVENT_LIFECYCLE_STARTED, "die": virtevent.EVENT_LIFECYCLE_STOPPED}
UNSUPPORTED = ("supports_evacuate", "supports_attach_interface", "supports_device_tagging",
               "supports_tagged_attach_interface", "supports_tagged_attach_volume", "supports_extend_volume",
               "supports_multiattach", "supports_trusted_certs", "supports_accelerators",
               "supports_remote_managed_ports", "supports_virtio_fs", "supports_mem_backing_file",
               "supports_stateless_firmware", "supports_address_space_passthrough",
               "supports_address_space_emulated")


def settings_from_conf() -> settings_module.Settings:
    options = CONF[GROUP]
    local_dir = Path(options.local_dir).expanduser() if options.local_dir else settings_module.default_local_dir()
    return settings_module.Settings(
        local_dir=local_dir, port_wired_timeout_s=options.port_wired_timeout, guest_nic_wait_s=options.guest_nic_wait,
        docker_timeout_s=options.docker_timeout, command_timeout_s=options.command_timeout,
        stop_timeout_s=options.stop_timeout, console_bytes=options.console_bytes,
        min_memory_limit_mb=options.min_memory_limit_mb, port_wired_fatal=CONF.vif_plugging_is_fatal)


def nics_of(network_info) -> tuple[Nic, ...]:
    """The VIFs of Nova's network_info, in order (eth0 first)."""
    return tuple(Nic(port_id=vif["id"], network_id=vif["network"]["id"], mac=vif["address"],
                     mtu=int((vif["network"].get("meta") or {}).get("mtu") or DEFAULT_MTU),
                     fixed_ips=tuple(ip["address"] for ip in vif.fixed_ips()))
                 for vif in network_info or ())


def volumes_of(block_device_info):
    return [volume_from_connection_info(bdm["connection_info"], bdm["mount_device"])
            for bdm in driver.block_device_info_get_mapping(block_device_info) if bdm.get("connection_info")]


def host_memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) // 1024 for line in meminfo if line.startswith("MemTotal:"))


class ContainerDriver(fake.FakeDriverWithoutFakeNodes):
    """Nova's servers as systemd container-VMs (see the module's docstring)."""

    capabilities = {**fake.FakeDriver.capabilities, **dict.fromkeys(UNSUPPORTED, False),
                    "has_imagecache": True}

    def __init__(self, virtapi, read_only=False):
        self.settings = settings_from_conf()
        self.vcpus = os.cpu_count() or 1
        self.memory_mb = host_memory_mb()
        self.local_gb = shutil.disk_usage(self._existing_parent(self.settings.local_dir)).total // 1024 ** 3
        super().__init__(virtapi, read_only)
        self.host_status_base.update(
            hypervisor_type="docker",
            supported_instances=[(obj_fields.Architecture.X86_64, obj_fields.HVType.DOCKER, obj_fields.VMMode.EXE)])
        self.hypervisor = Hypervisor(self.settings)
        self.image_cache = ImageCache(self.hypervisor.docker, self.settings.images_dir)
        self._events: EventFollower | None = None

    @staticmethod
    def _existing_parent(path: Path) -> Path:
        while not path.exists() and path != path.parent:
            path = path.parent
        return path

    # --- the host ------------------------------------------------------------------------------

    def init_host(self, host):
        super().init_host(host)
        self.hypervisor.resume()
        if CONF[GROUP].follow_events and self._events is None:
            self._events = EventFollower(self.hypervisor.docker, self._on_container_event)
            self._events.start()
        LOG.info("container hypervisor ready: %d server(s) here, state in %s",
                 len(self.list_instance_uuids()), self.settings.instances_dir)

    def cleanup_host(self, host):
        if self._events is not None:
            self._events.stop()
            self._events = None
        self.hypervisor.close()

    def _on_container_event(self, event: ContainerEvent) -> None:
        if not self.hypervisor.owns(event.instance_uuid, event.hypervisor):
            return                       # another hypervisor's VM on the same Docker engine (a test's)
        if self.hypervisor.on_container_event(event):
            return                       # the guest rebooted itself: still running, as a VM would be
        self.emit_event(virtevent.LifecycleEvent(event.instance_uuid, LIFECYCLE[event.action]))

    # --- what runs here ------------------------------------------------------------------------

    def list_instances(self):
        return [state.name for state in self.hypervisor.store.all()
                if state.uuid in set(self.list_instance_uuids())]

    def list_instance_uuids(self):
        return self.hypervisor.instance_uuids()

    def get_info(self, instance, use_cache=True):
        state = self._call(instance, self.hypervisor.container_state, instance.uuid)
        if state is None:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        return hardware.InstanceInfo(state=POWER_STATES.get(state.status, power_state.NOSTATE),
                                     internal_id=state.name)

    def instance_on_disk(self, instance):
        return False

    def get_host_ip_addr(self):
        return CONF.my_ip

    def get_host_uptime(self):
        return commands.run(["uptime"], what="host uptime", timeout_s=self.settings.command_timeout_s).stdout.strip()

    # --- boot and shut down ---------------------------------------------------------------------

    def spawn(self, context, instance, image_meta, injected_files, admin_password, allocations,
              network_info=None, block_device_info=None, power_on=True, accel_info=None):
        image = self._image(context, instance, image_meta)
        spec = VMSpec(uuid=instance.uuid, name=instance.name, hostname=instance.hostname or instance.uuid,
                      image=image, nics=nics_of(network_info), memory_mb=instance.flavor.memory_mb)
        events = [("network-vif-plugged", vif["id"]) for vif in network_info or () if vif.get("active", True) is False]
        try:
            with self.virtapi.wait_for_instance_event(instance, events, timeout=CONF.vif_plugging_timeout,
                                                      error_callback=self._neutron_failed_callback):
                self._spawn_guest(instance, spec, volumes_of(block_device_info))
        except exception.InstanceEventTimeout:
            if CONF.vif_plugging_is_fatal:
                self.hypervisor.destroy(instance.uuid)
                raise exception.VirtualInterfaceCreateException() from None
            LOG.warning("Neutron did not report the VIFs plugged; booting anyway", instance=instance)
        if power_on:
            self._boot_new_guest(instance)
        LOG.info("Instance spawned as container %s", naming.instance_container(instance.uuid), instance=instance)

    def _spawn_guest(self, instance, spec: VMSpec, volumes) -> None:
        """Create the VM, its VIFs plugged and wired and its volumes attached, not yet booted."""
        try:
            self.hypervisor.spawn(spec, volumes, power_on=False)
        except PortNotWired as exc:
            LOG.error("%s", exc, instance=instance)
            raise exception.VirtualInterfaceCreateException() from exc
        except HypervisorError as exc:
            raise exception.InstanceDeployFailure(reason=f"instance {instance.uuid}: {exc}") from exc

    def _boot_new_guest(self, instance) -> None:
        try:
            self.hypervisor.boot(instance.uuid)
        except HypervisorError as exc:
            self.hypervisor.destroy(instance.uuid)
            raise exception.InstanceDeployFailure(reason=f"instance {instance.uuid}: {exc}") from exc

    def _neutron_failed_callback(self, event_name, instance):
        LOG.error("Neutron reported failure on event %s", event_name, instance=instance)
        if CONF.vif_plugging_is_fatal:
            raise exception.VirtualInterfaceCreateException()

    def _image(self, context, instance, image_meta) -> str:
        if image_meta.obj_attr_is_set("container_format") and image_meta.container_format != DOCKER_CONTAINER_FORMAT:
            raise exception.ImageUnacceptable(image_id=image_meta.id, reason=(
                f"container_format is {image_meta.container_format}; this hypervisor runs only "
                f"container_format {DOCKER_CONTAINER_FORMAT} (a docker save archive)"))
        return self._call(instance, self.image_cache.ensure, image_meta.id,
                          lambda path: images.fetch(context, image_meta.id, str(path)))

    def destroy(self, context, instance, network_info, block_device_info=None, destroy_disks=True,
                destroy_secrets=True):
        self._call(instance, self.hypervisor.destroy, instance.uuid, nics_of(network_info),
                   volumes_of(block_device_info))

    def cleanup(self, context, instance, network_info, block_device_info=None, destroy_disks=True,
                migrate_data=None, destroy_vifs=True, destroy_secrets=True):
        return None                      # destroy() removed everything

    def power_off(self, instance, timeout=0, retry_interval=0):
        self._call(instance, self.hypervisor.power_off, instance.uuid, timeout)

    def power_on(self, context, instance, network_info, block_device_info=None, accel_info=None, share_info=None):
        self._call(instance, self.hypervisor.power_on, instance.uuid)

    def reboot(self, context, instance, network_info, reboot_type, block_device_info=None,
               bad_volumes_callback=None, accel_info=None, share_info=None):
        self._call(instance, self.hypervisor.reboot, instance.uuid, reboot_type.upper() == "HARD")

    def resume_state_on_host_boot(self, context, instance, network_info, share_info, block_device_info=None):
        self.power_on(context, instance, network_info, block_device_info)

    def pause(self, instance):
        self._call(instance, self.hypervisor.docker.pause, naming.instance_container(instance.uuid))

    def unpause(self, instance):
        self._call(instance, self.hypervisor.docker.unpause, naming.instance_container(instance.uuid))

    def plug_vifs(self, instance, network_info):
        self._call(instance, self.hypervisor.ensure_plugged, instance.uuid)

    def unplug_vifs(self, instance, network_info):
        return None                      # a stopped or destroyed VM's veths are gone with its namespace

    def get_console_output(self, context, instance):
        # bytes, as libvirt's: Nova encodes a str as latin-1, which systemd's "…" is not
        try:
            return self._call(instance, self.hypervisor.console_output, instance.uuid)
        except exception.InstanceNotFound:
            raise exception.ConsoleNotAvailable() from None

    def manage_image_cache(self, context, all_instances):
        in_use = {instance.image_ref for instance in all_instances if instance.image_ref}
        try:
            removed = self.image_cache.prune(in_use, CONF.image_cache.remove_unused_original_minimum_age_seconds)
        except HypervisorError as exc:
            LOG.warning("image cache pass: %s", exc)
            return
        for image_id in removed:
            LOG.info("removed unused cached image %s", image_id)

    # --- what Nova must not believe works --------------------------------------------------------

    def snapshot(self, context, instance, image_id, update_task_state):
        raise NotImplementedError("snapshots of container-VMs are not supported")

    def suspend(self, context, instance):
        raise NotImplementedError("suspend is not supported; use pause or stop")

    def rescue(self, context, instance, network_info, image_meta, rescue_password, block_device_info,
               share_info):
        raise NotImplementedError("rescue is not supported")

    def attach_interface(self, context, instance, image_meta, vif):
        raise NotImplementedError("attaching interfaces to a running container-VM is not supported")

    def detach_interface(self, context, instance, vif):
        raise NotImplementedError("detaching interfaces from a running container-VM is not supported")

    def swap_volume(self, context, old_connection_info, new_connection_info, instance, mountpoint, resize_to):
        raise NotImplementedError("swapping volumes is not supported")

    def extend_volume(self, context, connection_info, instance, requested_size):
        raise NotImplementedError("extending an attached volume is not supported")

    # --- volumes --------------------------------------------------------------------------------

    def attach_volume(self, context, connection_info, instance, mountpoint, disk_bus=None, device_type=None,
                      encryption=None):
        volume_id = (connection_info.get("data") or {}).get("volume_id", "?")
        if encryption:
            raise exception.VolumeEncryptionNotSupported(volume_type="encrypted", volume_id=volume_id)
        try:
            self.hypervisor.attach_volume(instance.uuid, volume_from_connection_info(connection_info, mountpoint))
        except HypervisorError as exc:
            raise exception.VolumeAttachFailed(volume_id=volume_id, reason=str(exc)) from exc

    def detach_volume(self, context, connection_info, instance, mountpoint, encryption=None):
        try:
            self.hypervisor.detach_volume(instance.uuid, guest_node(mountpoint))
        except HypervisorError as exc:
            volume_id = (connection_info.get("data") or {}).get("volume_id", "?")
            raise exception.VolumeDetachFailed(volume_id=volume_id, reason=str(exc)) from exc

    def default_root_device_name(self, instance, image_meta, root_bdm):
        # virtio disks, as on KVM: Nova then names volumes /dev/vdb, /dev/vdc, ...
        return ROOT_DEVICE

    def get_volume_connector(self, instance):
        return {"ip": CONF.my_block_storage_ip, "host": CONF.host, "initiator": "astrostack-local",
                "platform": "x86_64", "os_type": "linux", "multipath": False}

    # --- errors ---------------------------------------------------------------------------------

    @staticmethod
    def _call(instance, operation, *args):
        """OPERATION(*ARGS), hypervisor errors as Nova's (one line, naming the instance)."""
        try:
            return operation(*args)
        except Missing as exc:
            raise exception.InstanceNotFound(instance_id=instance.uuid) from exc
        except HypervisorError as exc:
            raise exception.NovaException(f"instance {instance.uuid}: {exc}") from exc

