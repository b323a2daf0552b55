"""The hypervisor: servers as container-VMs, without Nova.

:class:`Hypervisor` boots, stops, reboots and destroys VMs, plugs their VIFs
and volumes and serves their channel; the Nova driver translates Nova's
objects into its :class:`VMSpec` and calls it, and the functional tests call
it directly. Boot order, as on a cloud: the VIFs exist (host ends in their
bridges) and the network agent has wired their ports before the guest runs;
the guest's boot shim then waits until its volumes and NICs are plugged, and
only then becomes systemd.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from astrostack_localcloud import naming

from . import vifs as vifs_module
from .channel import ChannelServers
from .containers import EXIT_GUEST_REBOOT, ContainerSpec, ContainerState, Docker, hypervisor_of, instance_uuid_of
from .errors import HypervisorError, PortNotWired
from .events import ContainerEvent
from .settings import Settings
from .shares import Shares
from .state import AttachedVolume, InstanceState, Nic, StateStore
from .volumes import Volumes

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class VMSpec:
    """What a VM is booted from."""

    uuid: str
    name: str                 # Nova's instance name (instance-0000000a)
    hostname: str
    image: str                # a Docker image reference
    nics: tuple[Nic, ...] = ()
    memory_mb: int = 0        # 0: no memory limit


class Hypervisor:
    def __init__(self, settings: Settings, docker: Docker | None = None):
        self.settings = settings
        self.docker = docker or Docker(timeout_s=settings.docker_timeout_s)
        self.store = StateStore(settings.instances_dir)
        self.vifs = vifs_module.Vifs(timeout_s=settings.command_timeout_s)
        self.volumes = Volumes(timeout_s=settings.command_timeout_s)
        self.shares = Shares(self.store, self.docker)
        self.channels = ChannelServers(settings.channel_dir, self.shares.handle)

    # --- boot and shut down --------------------------------------------------------------------

    def spawn(self, spec: VMSpec, volumes: Sequence[AttachedVolume] = (), power_on: bool = True) -> InstanceState:
        """Create the VM of SPEC and (unless POWER_ON is false) boot it; on any failure, leave nothing."""
        state = InstanceState(uuid=spec.uuid, name=spec.name, hostname=spec.hostname, image=spec.image,
                              nics=spec.nics, memory_mb=spec.memory_mb)
        self.store.save(state)
        try:
            channel_dir = self.channels.start(spec.uuid)
            self.docker.create(self._container_spec(spec, channel_dir))
            for nic in spec.nics:
                self.vifs.stage(nic)
            self._wait_ports_wired(spec)
            for volume in volumes:
                self.attach_volume(spec.uuid, volume)
            if power_on:
                self.boot(spec.uuid)
        except BaseException:
            LOG.error("spawn of instance %s failed; cleaning up", spec.uuid)
            self.destroy(spec.uuid)
            raise
        return self.store.load(spec.uuid) or state

    def _wait_ports_wired(self, spec: VMSpec) -> None:
        try:
            vifs_module.wait_ports_wired([nic.port_id for nic in spec.nics], self.settings.ports_dir,
                                         self.settings.port_wired_timeout_s, self.settings.poll_interval_s)
        except PortNotWired as exc:
            if self.settings.port_wired_fatal:
                raise
            LOG.warning("instance %s boots anyway: %s", spec.uuid, exc)

    def _container_spec(self, spec: VMSpec, channel_dir) -> ContainerSpec:
        memory = spec.memory_mb if spec.memory_mb >= self.settings.min_memory_limit_mb else 0
        return ContainerSpec(instance_uuid=spec.uuid, instance_name=spec.name, hostname=spec.hostname,
                             image=spec.image, nic_count=len(spec.nics), channel_dir=channel_dir,
                             hypervisor=self.label, memory_mb=memory, nic_wait_s=self.settings.guest_nic_wait_s,
                             stop_timeout_s=self.settings.stop_timeout_s)

    def boot(self, instance_uuid: str) -> ContainerState:
        """Start the VM's container and plug its volumes, then its NICs (which lets its shim boot)."""
        state = self._require_state(instance_uuid)
        self.channels.start(instance_uuid)
        self.store.update(instance_uuid, lambda s: replace(s, share_mounts=()))
        started = self.docker.start(state.container)
        for volume in state.volumes:
            self._give_volume(instance_uuid, volume, started.pid)
        for index, nic in enumerate(state.nics):
            if not self.vifs.link_exists(nic.staged):
                self.vifs.stage(nic)
            self.vifs.move_into_guest(nic, index, started.pid)
        LOG.info("instance %s booting (pid %d)", instance_uuid, started.pid)
        return started

    def power_off(self, instance_uuid: str, timeout_s: float | None = None) -> None:
        """A clean shutdown within TIMEOUT_S (default: the settings'), then off; 0: pull the plug."""
        state = self._require_state(instance_uuid)
        container = self.docker.inspect(state.container)
        if container is not None and container.status in ("running", "paused", "restarting"):
            timeout = self.settings.stop_timeout_s if timeout_s is None else timeout_s
            if timeout > 0:
                self.docker.stop(state.container, timeout)
            else:
                self.docker.kill(state.container)
        for nic in state.nics:
            self.vifs.unplug(nic)

    def power_on(self, instance_uuid: str) -> ContainerState:
        container = self.docker.require(self._require_state(instance_uuid).container)
        if container.running:
            return container
        return self.boot(instance_uuid)

    def reboot(self, instance_uuid: str, hard: bool = False) -> ContainerState:
        """Soft: a clean shutdown, then boot; hard: power cut, then boot. VIFs are plugged anew."""
        self.power_off(instance_uuid, 0 if hard else None)
        return self.boot(instance_uuid)

    def destroy(self, instance_uuid: str, nics: Sequence[Nic] = (), volumes: Sequence[AttachedVolume] = ()) -> None:
        """Remove everything of the VM: its trees in other VMs, container, Docker volume, VIFs, loop devices,
        channel socket, state file. Idempotent; NICS and VOLUMES add what Nova knows and the state may not."""
        state = self.store.load(instance_uuid)
        known_nics = tuple(nics) + (state.nics if state else ())
        known_volumes = tuple(volumes) + (state.volumes if state else ())
        self.shares.detach_served_by(instance_uuid)
        self.docker.remove(naming.instance_container(instance_uuid))
        self.docker.remove_volume(naming.instance_docker_volume(instance_uuid))
        for nic in known_nics:
            self.vifs.unplug(nic)
        for volume in known_volumes:
            self.volumes.detach_loops(volume)
        self.channels.stop(instance_uuid, remove=True)
        self.store.delete(instance_uuid)
        LOG.info("instance %s destroyed", instance_uuid)

    # --- volumes -------------------------------------------------------------------------------

    def attach_volume(self, instance_uuid: str, volume: AttachedVolume) -> AttachedVolume:
        """VOLUME on a loop device, seen by the guest at its mountpoint (now if it runs, else at boot)."""
        self._require_state(instance_uuid)
        on_loop = self.volumes.attach_loop(volume)
        try:
            self.store.update(instance_uuid, lambda s: s.with_volume(on_loop))
            container = self.docker.inspect(naming.instance_container(instance_uuid))
            if container is not None and container.running:
                self._give_volume(instance_uuid, on_loop, container.pid)
        except BaseException:
            self.volumes.detach_loops(on_loop)
            self.store.update(instance_uuid, lambda s: s.without_volume(on_loop.mountpoint))
            raise
        return on_loop

    def _give_volume(self, instance_uuid: str, volume: AttachedVolume, guest_pid: int) -> None:
        on_loop = self.volumes.attach_loop(volume)
        if on_loop.loop_device != volume.loop_device:
            self.store.update(instance_uuid, lambda s: s.with_volume(on_loop))
        self.volumes.install_in_guest(on_loop, guest_pid)

    def detach_volume(self, instance_uuid: str, mountpoint: str) -> None:
        state = self._require_state(instance_uuid)
        volume = state.volume_at(mountpoint)
        if volume is None:
            LOG.warning("instance %s has no volume at %s", instance_uuid, mountpoint)
            return
        container = self.docker.inspect(state.container)
        if container is not None and container.running:
            self.volumes.remove_from_guest(volume, container.pid)
        self.volumes.detach_loops(volume)
        self.store.update(instance_uuid, lambda s: s.without_volume(mountpoint))

    # --- what runs here ------------------------------------------------------------------------

    def container_state(self, instance_uuid: str) -> ContainerState | None:
        return self.docker.inspect(naming.instance_container(instance_uuid))

    @property
    def label(self) -> str:
        """This hypervisor's LABEL_HYPERVISOR: its folder (two hypervisors on one engine are two folders)."""
        return str(self.settings.local_dir)

    def owns(self, instance_uuid: str, hypervisor_label: str) -> bool:
        """Whether a server container is this hypervisor's (one labelled before the label existed is, if
        this hypervisor has its state file)."""
        if hypervisor_label:
            return hypervisor_label == self.label
        return self.store.path(instance_uuid).exists()

    def instance_uuids(self) -> list[str]:
        """The servers of this hypervisor that Docker has, in any state."""
        entries = self.docker.instance_containers()
        return [uuid for uuid, label in ((instance_uuid_of(e), hypervisor_of(e)) for e in entries)
                if uuid and self.owns(uuid, label)]

    def console_output(self, instance_uuid: str) -> bytes:
        """The last bytes of the VM's tty (raw, as a serial console log)."""
        return self.docker.console(naming.instance_container(instance_uuid), self.settings.console_bytes)

    def console(self, instance_uuid: str) -> str:
        return self.console_output(instance_uuid).decode("utf-8", errors="replace")

    def resume(self) -> None:
        """After a restart of this process: serve the channel of every VM that has a state file."""
        for state in self.store.all():
            self.channels.start(state.uuid)

    def ensure_plugged(self, instance_uuid: str) -> None:
        """Nova's plug_vifs at start-up: a running VM whose taps vanished gets them again."""
        state = self.store.load(instance_uuid)
        container = self.container_state(instance_uuid)
        if state is None or container is None or not container.running or self.vifs.plugged(state.nics):
            return
        LOG.warning("instance %s runs without its VIFs; plugging them again", instance_uuid)
        for nic in state.nics:
            self.vifs.unplug(nic)
        self.vifs.plug(state.nics, container.pid)

    def on_container_event(self, event: ContainerEvent) -> bool:
        """A guest that rebooted itself is booted again (a VM's reboot never stops it); True if so."""
        if event.action != "die" or event.exit_code != EXIT_GUEST_REBOOT:
            return False
        if not self.owns(event.instance_uuid, event.hypervisor) or self.store.load(event.instance_uuid) is None:
            return False
        LOG.info("instance %s rebooted itself; booting it again", event.instance_uuid)
        try:
            self.power_on(event.instance_uuid)
        except HypervisorError as exc:
            LOG.error("instance %s: boot after its reboot failed: %s", event.instance_uuid, exc)
            return False
        return True

    def close(self) -> None:
        self.channels.stop_all()

    def _require_state(self, instance_uuid: str) -> InstanceState:
        state = self.store.load(instance_uuid)
        if state is None:
            raise HypervisorError(f"instance {instance_uuid} is not known to this hypervisor (no state file "
                                  f"{self.store.path(instance_uuid)})")
        return state
