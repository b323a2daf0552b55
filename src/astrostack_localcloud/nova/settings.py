"""The hypervisor's settings: a plain value, filled from nova.conf by the driver."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LOCAL_DIR_ENV = "ASTROSTACK_LOCAL_DIR"
HOME_ENV = "ASTROSTACK_HOME"


def default_local_dir() -> Path:
    """$ASTROSTACK_LOCAL_DIR, else $ASTROSTACK_HOME/local, else ~/.local/share/astrostack/local."""
    if os.environ.get(LOCAL_DIR_ENV):
        return Path(os.environ[LOCAL_DIR_ENV])
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]) / "local"
    return Path.home() / ".local" / "share" / "astrostack" / "local"


@dataclass(frozen=True)
class Settings:
    """Where the hypervisor keeps its files and how long it waits."""

    local_dir: Path
    port_wired_timeout_s: float = 60.0      # 0: do not wait for the network agent
    port_wired_fatal: bool = True           # as Nova's vif_plugging_is_fatal
    guest_nic_wait_s: float = 120.0         # how long the boot shim waits for its NICs
    docker_timeout_s: float = 60.0          # every Docker API call
    command_timeout_s: float = 30.0         # every host command (ip, losetup, ...)
    stop_timeout_s: float = 30.0            # a clean guest shutdown, before SIGKILL
    console_bytes: int = 100 * 1024         # as libvirt's MAX_CONSOLE_BYTES
    min_memory_limit_mb: int = 512          # smaller flavors run without a memory limit
    poll_interval_s: float = 0.2

    @property
    def instances_dir(self) -> Path:
        return self.local_dir / "nova" / "instances"

    @property
    def images_dir(self) -> Path:
        return self.local_dir / "nova" / "images"

    @property
    def channel_dir(self) -> Path:
        return self.local_dir / "hv"

    @property
    def ports_dir(self) -> Path:
        return self.local_dir / "net" / "ports"

    def channel_socket_dir(self, instance_uuid: str) -> Path:
        return self.channel_dir / instance_uuid
