"""Glance images of container_format ``docker``: downloaded once, ``docker load``ed, cached by image id.

The image's data is a ``docker save`` archive of one image. The cache is the
Docker engine itself: the loaded image is tagged
``naming.glance_image_reference(image_id)``, so a second server of the same
image (or a restarted nova-compute) finds it without downloading again. A
file ``<image id>.used`` in the downloads folder records its last use; Nova's
image cache manager pass removes images no server here uses once they have
been unused that long (``[image_cache] remove_unused_original_minimum_age_seconds``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from astrostack_localcloud import naming

from .containers import Docker
from .errors import HypervisorError, ImageUnavailable

LOG = logging.getLogger(__name__)
DOCKER_CONTAINER_FORMAT = "docker"
CACHE_REPOSITORY = naming.glance_image_reference("").rstrip(":")


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
                self._mark_used(image_id)
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
            self._mark_used(image_id)
        LOG.info("Glance image %s is %s", image_id, reference)
        return reference

    def _marker(self, image_id: str) -> Path:
        return self.downloads_dir / f"{image_id}.used"

    def _mark_used(self, image_id: str) -> None:
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        self._marker(image_id).touch()

    def prune(self, in_use: Iterable[str], min_age_s: float, clock: Callable[[], float] = time.time) -> list[str]:
        """Remove the cached images that no server uses and that nothing used for MIN_AGE_S; their ids."""
        keep, removed = set(in_use), []
        for reference in self.docker.references(CACHE_REPOSITORY):
            image_id = reference.rsplit(":", 1)[1]
            if image_id in keep:
                self._mark_used(image_id)
            elif not self._marker(image_id).exists():
                self._mark_used(image_id)          # cached before markers existed: its age starts now
            elif clock() - self._marker(image_id).stat().st_mtime >= min_age_s:
                self.docker.remove_image(reference)
                self._marker(image_id).unlink(missing_ok=True)
                removed.append(image_id)
        return removed
