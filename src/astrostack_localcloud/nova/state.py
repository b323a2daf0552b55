"""What the hypervisor knows about each server, kept in ``nova/instances/<uuid>.json``.

Docker holds what runs; this file holds what Docker cannot: the VIFs to
re-plug after a restart, the volumes on loop devices, the exports a server
registered through the hypervisor channel and the shares attached from other
servers. It survives a nova-compute restart. Only nova-compute writes it,
through :class:`StateStore`, whose updates are atomic (write + rename) and
serialised per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from astrostack_localcloud import naming

from .errors import HypervisorError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Nic:
    """One VIF: a Neutron port plugged into its network's bridge."""

    port_id: str
    network_id: str
    mac: str
    mtu: int
    fixed_ips: tuple[str, ...] = ()
    bridge_name: str = ""           # only tests set it; else the network's bridge by naming

    @property
    def bridge(self) -> str:
        return self.bridge_name or naming.network_bridge(self.network_id)

    @property
    def tap(self) -> str:
        return naming.tap_device(self.port_id)

    @property
    def staged(self) -> str:
        return naming.staged_guest_device(self.port_id)


@dataclass(frozen=True)
class AttachedVolume:
    """A Cinder volume (a file) on a host loop device, seen by the guest at ``mountpoint``."""

    volume_id: str
    device_path: str
    mountpoint: str
    loop_device: str = ""


@dataclass(frozen=True)
class ShareMount:
    """A server's exported tree attached into this instance by the NFS substitute."""

    server_uuid: str
    server_path: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class InstanceState:
    uuid: str
    name: str
    hostname: str
    image: str
    nics: tuple[Nic, ...] = ()
    memory_mb: int = 0
    volumes: tuple[AttachedVolume, ...] = ()
    exports_text: str = ""
    share_mounts: tuple[ShareMount, ...] = ()

    @property
    def container(self) -> str:
        return naming.instance_container(self.uuid)

    @property
    def fixed_ips(self) -> tuple[str, ...]:
        return tuple(ip for nic in self.nics for ip in nic.fixed_ips)

    def volume_at(self, mountpoint: str) -> AttachedVolume | None:
        return next((v for v in self.volumes if v.mountpoint == mountpoint), None)

    def with_volume(self, volume: AttachedVolume) -> InstanceState:
        kept = tuple(v for v in self.volumes if v.mountpoint != volume.mountpoint)
        return replace(self, volumes=kept + (volume,))

    def without_volume(self, mountpoint: str) -> InstanceState:
        return replace(self, volumes=tuple(v for v in self.volumes if v.mountpoint != mountpoint))

    def with_share(self, share: ShareMount) -> InstanceState:
        kept = tuple(s for s in self.share_mounts if s.target != share.target)
        return replace(self, share_mounts=kept + (share,))

    def without_shares_from(self, server_uuid: str) -> InstanceState:
        return replace(self, share_mounts=tuple(s for s in self.share_mounts if s.server_uuid != server_uuid))

    def to_json(self) -> dict:
        return {"version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> InstanceState:
        fields = {k: v for k, v in data.items() if k != "version"}
        return cls(
            **{**fields,
               "nics": tuple(Nic(**{**n, "fixed_ips": tuple(n.get("fixed_ips", ()))}) for n in data.get("nics", ())),
               "volumes": tuple(AttachedVolume(**v) for v in data.get("volumes", ())),
               "share_mounts": tuple(ShareMount(**s) for s in data.get("share_mounts", ()))})


@dataclass
class StateStore:
    """The state files of one hypervisor, one per instance."""

    directory: Path
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def path(self, instance_uuid: str) -> Path:
        return self.directory / f"{instance_uuid}.json"

    def load(self, instance_uuid: str) -> InstanceState | None:
        path = self.path(instance_uuid)
        try:
            return InstanceState.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise HypervisorError(f"state file {path} is unreadable: {exc}") from exc

    def save(self, state: InstanceState) -> None:
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            target = self.path(state.uuid)
            temporary = target.with_suffix(".json.tmp")
            temporary.write_text(json.dumps(state.to_json(), indent=1, sort_keys=True))
            os.replace(temporary, target)

    def update(self, instance_uuid: str, change: Callable[[InstanceState], InstanceState]) -> InstanceState | None:
        """Apply CHANGE to the stored state (None when there is no state) and save the result."""
        with self._lock:
            state = self.load(instance_uuid)
            if state is None:
                return None
            changed = change(state)
            self.save(changed)
            return changed

    def delete(self, instance_uuid: str) -> None:
        with self._lock:
            self.path(instance_uuid).unlink(missing_ok=True)

    def all(self) -> list[InstanceState]:
        return [state for state in (self.load(path.stem) for path in self._state_files()) if state is not None]

    def _state_files(self) -> Iterator[Path]:
        with contextlib.suppress(FileNotFoundError):
            yield from sorted(self.directory.glob("*.json"))

    def find_by_fixed_ip(self, address: str) -> InstanceState | None:
        return next((state for state in self.all() if address in state.fixed_ips), None)
