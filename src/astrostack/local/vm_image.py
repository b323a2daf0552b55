"""The VM image in Glance: ``docker save`` of ``astrostack/vm:latest`` as image ``debian-12``.

Glance holds it with ``container_format: docker`` and the Docker image id as
the property ``astrostack_image_id``; when the local Docker image changes,
the Glance image is replaced (the new one uploaded first, then the old ones
deleted), so servers always boot what ``images/vm/`` builds now.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from astrostack import images
from astrostack.errors import LocalCloudError
from astrostack.local import commands, layout

Progress = Callable[[str], None]
DOCKER_IMAGE = "astrostack/vm:latest"
GLANCE_NAME = "debian-12"
ID_PROPERTY = "astrostack_image_id"
PROPERTIES = {"os_distro": "debian", "os_version": "12", "hw_disk_bus": "virtio"}
SAVE_TIMEOUT_S = 900
UPLOAD_TIMEOUT_S = 1800


def ensure_docker_image(say: Progress) -> str:
    """The Docker image to put in Glance: astrostack/vm:latest, built when missing or
    when images/vm/ changed since it was built.

    While images/vm/ does not build, the Debian base image stands in (enough
    for the fake compute driver), and the next start replaces it.
    """
    if images.built_from_current_recipe("vm"):
        return DOCKER_IMAGE
    say(f"building {DOCKER_IMAGE} for Glance ({'images/vm changed' if images.image_exists(DOCKER_IMAGE) else 'once'}; "
        "a few minutes)")
    images.ensure_base_image(progress=None)
    try:
        images.build("vm", progress=_build_progress(say))
    except LocalCloudError as exc:
        say(f"  {exc}")
        say(f"  Glance gets {images.BASE_IMAGE} as {GLANCE_NAME} until {DOCKER_IMAGE} builds")
        return images.BASE_IMAGE
    return DOCKER_IMAGE


def _build_progress(say: Progress) -> Callable[[str], None]:
    """Relay only the build's step lines (a line per step, none per apt package)."""
    def relay(line: str) -> None:
        if line.startswith("Step "):
            say(f"  {line}")
    return relay


def glance_images(conn: Any) -> list[Any]:
    return [image for image in conn.image.images(name=GLANCE_NAME)]


def is_current(image: Any, docker_id: str) -> bool:
    properties = getattr(image, "properties", None) or {}
    value = properties.get(ID_PROPERTY) or getattr(image, ID_PROPERTY, None)
    return value == docker_id and image.status == "active"


def ensure(conn: Any, say: Progress) -> None:
    """debian-12 in Glance is the current astrostack/vm image (uploads only when it changed)."""
    tag = ensure_docker_image(say)
    docker_id = images.image_digest(tag)
    existing = glance_images(conn)
    if any(is_current(image, docker_id) for image in existing):
        return
    upload(conn, tag, docker_id, say)
    for outdated in existing:
        say(f"  deleting outdated Glance image {outdated.id}")
        conn.image.delete_image(outdated, ignore_missing=True)


def upload(conn: Any, tag: str, docker_id: str, say: Progress) -> Any:
    with tempfile.TemporaryDirectory(prefix="vm-image-", dir=layout.state_dir("glance")) as work:
        archive = Path(work) / "vm.tar"
        say(f"saving {tag} ({docker_id[:19]}) for Glance")
        commands.run(["docker", "save", "-o", str(archive), tag], f"docker save {tag}", timeout=SAVE_TIMEOUT_S)
        started = time.monotonic()
        say(f"uploading it to Glance as {GLANCE_NAME} ({archive.stat().st_size / 2**20:.0f} MiB)")
        image = conn.image.create_image(
            name=GLANCE_NAME, filename=str(archive), container_format="docker", disk_format="raw",
            visibility="public", allow_duplicates=True, wait=True, timeout=UPLOAD_TIMEOUT_S,
            **PROPERTIES, **{ID_PROPERTY: docker_id})
        say(f"  {GLANCE_NAME} is image {image.id} ({time.monotonic() - started:.0f} s)")
        return image
