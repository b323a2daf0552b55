"""Cinder volume driver of the local cloud: one sparse file per volume.

``LOCAL/cinder/volumes/volume-<id>`` holds a volume's bytes. Attaching
returns the file (``driver_volume_type: astrostack_file``); the Nova driver
puts it on a loop device and hands the VM the block node. Capacity is the
free space of the file system that holds the folder (thin: files are sparse).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from cinder import exception
from cinder.volume import configuration, driver
from oslo_config import cfg
from oslo_log import log as logging

LOG = logging.getLogger(__name__)
GIB = 1024 ** 3
CONNECTION_TYPE = "astrostack_file"

file_opts = [
    cfg.StrOpt("astrostack_volumes_dir", default="$state_path/volumes",
               help="Folder of the sparse files that are the volumes."),
]
cfg.CONF.register_opts(file_opts, group=configuration.SHARED_CONF_GROUP)


class FileVolumeDriver(driver.VolumeDriver):
    """Volumes, snapshots and clones as sparse files in one folder."""

    VERSION = "1.0.0"
    CI_WIKI_NAME = "astrostack"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(file_opts)
        self.backend_name = self.configuration.safe_get("volume_backend_name") or "file"

    @property
    def folder(self) -> str:
        return self.configuration.astrostack_volumes_dir

    def do_setup(self, context) -> None:
        os.makedirs(self.folder, mode=0o700, exist_ok=True)

    def check_for_setup_error(self) -> None:
        if not os.access(self.folder, os.W_OK):
            raise exception.VolumeBackendAPIException(data=f"{self.folder} is not writable")

    # --- paths ------------------------------------------------------------------

    def local_path(self, volume) -> str:
        return os.path.join(self.folder, f"volume-{volume.id}")

    def _snapshot_path(self, snapshot) -> str:
        return os.path.join(self.folder, f"snapshot-{snapshot.id}")

    # --- volumes ------------------------------------------------------------------

    def create_volume(self, volume) -> dict:
        self._allocate(self.local_path(volume), volume.size)
        return {}

    def delete_volume(self, volume) -> None:
        self._remove(self.local_path(volume))

    def extend_volume(self, volume, new_size) -> None:
        os.truncate(self.local_path(volume), new_size * GIB)

    def create_cloned_volume(self, volume, src_vref) -> dict:
        self._copy_sparse(self.local_path(src_vref), self.local_path(volume), volume.size)
        return {}

    def create_snapshot(self, snapshot) -> None:
        self._copy_sparse(self.local_path(snapshot.volume), self._snapshot_path(snapshot), snapshot.volume_size)

    def delete_snapshot(self, snapshot) -> None:
        self._remove(self._snapshot_path(snapshot))

    def create_volume_from_snapshot(self, volume, snapshot) -> dict:
        self._copy_sparse(self._snapshot_path(snapshot), self.local_path(volume), volume.size)
        return {}

    # --- exports and connections: the file itself is the export --------------------

    def ensure_export(self, context, volume) -> None:
        return None

    def create_export(self, context, volume, connector) -> None:
        return None

    def remove_export(self, context, volume) -> None:
        return None

    def initialize_connection(self, volume, connector, **kwargs) -> dict:
        return {"driver_volume_type": CONNECTION_TYPE,
                "data": {"device_path": self.local_path(volume), "volume_id": volume.id}}

    def terminate_connection(self, volume, connector, **kwargs) -> None:
        return None

    # --- capacity -------------------------------------------------------------------

    def _update_volume_stats(self) -> None:
        fs = os.statvfs(self.folder)
        self._stats = {
            "volume_backend_name": self.backend_name,
            "vendor_name": "astrostack",
            "driver_version": self.VERSION,
            "storage_protocol": CONNECTION_TYPE,
            "total_capacity_gb": round(fs.f_blocks * fs.f_frsize / GIB, 2),
            "free_capacity_gb": round(fs.f_bavail * fs.f_frsize / GIB, 2),
            "reserved_percentage": 0,
            "thin_provisioning_support": True,
            "thick_provisioning_support": False,
            "max_over_subscription_ratio": 20.0,
            "multiattach": False,
        }

    # --- files ------------------------------------------------------------------------

    @staticmethod
    def _allocate(path: str, size_gb: int) -> None:
        """A sparse file of size_gb GiB (no blocks written)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size_gb * GIB)
        finally:
            os.close(fd)

    @staticmethod
    def _copy_sparse(source: str, target: str, size_gb: int) -> None:
        """Copy keeping holes, then grow to the target size."""
        if shutil.which("cp") is None:
            raise exception.VolumeBackendAPIException(data="cp is not installed")
        subprocess.run(["cp", "--sparse=always", source, target], check=True, timeout=3600)
        if os.path.getsize(target) < size_gb * GIB:
            os.truncate(target, size_gb * GIB)

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            LOG.warning("%s was already gone", path)
