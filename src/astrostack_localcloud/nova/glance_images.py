"""Glance images of container_format ``docker``: downloaded once, ``docker load``ed, cached by image id.

The image's data is a ``docker save`` archive of one image. The cache is the
Docker engine itself: the loaded image is tagged
``naming.glance_image_reference(image_id)``, so a second server of the same
image (or a restarted nova-compute) finds it without downloading again.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from astrostack_localcloud import naming

from .containers import Docker
from .errors import HypervisorError, ImageUnavailable

LOG = logging.getLogger(__name__)
DOCKER_CONTAINER_FORMAT = "docker"


class ImageCache:
    def __init__(self, docker: Docker, downloads_dir: Path):
        self.docker, self.downloads_dir = docker, downloads_dir
        self._locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._locks_lock = threading.Lock()

    def _lock_for(self, image_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks[image_id]

    def ensure(self, image_id: str, download: Callable[[Path], None]) -> str:
        """The Docker reference of Glance image IMAGE_ID; DOWNLOAD(path) writes its data when not cached."""
        reference = naming.glance_image_reference(image_id)
        with self._lock_for(image_id):
            if self.docker.image_exists(reference):
                return reference
            self.downloads_dir.mkdir(parents=True, exist_ok=True)
            archive = self.downloads_dir / f"{image_id}.tar.part"
            try:
                LOG.info("downloading Glance image %s", image_id)
                download(archive)
                self.docker.load_image(archive, reference)
            except HypervisorError as exc:
                raise ImageUnavailable(f"Glance image {image_id}: {exc}") from exc
            finally:
                archive.unlink(missing_ok=True)
        LOG.info("Glance image %s loaded as %s", image_id, reference)
        return reference
