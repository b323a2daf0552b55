"""Container images of the local cloud, built with the Docker SDK.

No registry is reachable from the test machines, so the base image is made
from Debian's mirror with ``debootstrap`` and imported, without the packages
debootstrap downloaded and apt's lists and caches (80 of its 210 MB), and with
the apt settings Debian's own container images carry (every later
``apt-get install`` drops its downloads and caches too); every other image is
``images/<name>/Dockerfile`` built FROM it with the classic builder. A recipe
with a ``requirements.txt`` (pinned Python packages) gets them as wheels that
this machine's pip downloads into a copy of its context (``wheels/``): the
build installs them offline, so it needs no trust in this machine's network
path to PyPI inside the build container.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Callable, Optional

import docker
import docker.errors

from astrostack import paths
from astrostack.errors import LocalCloudError, PrecheckFailed

BASE_IMAGE = "astrostack/debian:bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
DEBOOTSTRAP_TIMEOUT_S = 900
WHEELS_TIMEOUT_S = 900
# The base image's Python (Debian 12's python3, its micro version for the markers), for which wheels are downloaded.
BASE_PYTHON = "3.11.2"
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

Progress = Optional[Callable[[str], None]]


def _client() -> docker.DockerClient:
    """A Docker SDK client, or a LocalCloudError if no engine answers."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise LocalCloudError(f"no Docker engine answers: {exc}",
                              hint="run `astrostack local up` or start dockerd") from exc
    return client


def image_exists(tag: str) -> bool:
    """True if the local engine holds an image with that tag."""
    try:
        _client().images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def image_digest(tag: str) -> str:
    """The image id (``sha256:...``) of a local image; no registry digest exists here."""
    try:
        return _client().images.get(tag).id
    except docker.errors.ImageNotFound as exc:
        raise LocalCloudError(f"image {tag} does not exist",
                              hint=f"build it with astrostack.images.build({tag!r})") from exc


def mirror() -> str:
    """The Debian mirror for debootstrap (env ``ASTROSTACK_DEBIAN_MIRROR``)."""
    return os.environ.get("ASTROSTACK_DEBIAN_MIRROR", DEFAULT_MIRROR)


# What debootstrap leaves that an image needs not carry: the .debs it
# downloaded, apt's package lists and its binary caches (each Dockerfile runs
# `apt-get update` before it installs).
BASE_LEFTOVERS = ("var/cache/apt/archives/*.deb", "var/cache/apt/archives/partial/*", "var/cache/apt/*.bin",
                  "var/lib/apt/lists/*")
# Debian's container images' apt settings (debuerreotype's docker-clean and
# docker-no-languages): after every install the downloads and caches go, and
# no translations are fetched.
APT_CLEAN_CONF = {
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'),
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
}


def base_recipe_digest() -> str:
    """sha256 of how the base image is made (its label; every image built FROM it includes it)."""
    recipe = repr((SUITE, "minbase", BASE_LEFTOVERS, sorted(APT_CLEAN_CONF.items())))
    return hashlib.sha256(recipe.encode()).hexdigest()


def ensure_base_image(progress: Progress = None, *, force: bool = False) -> str:
    """Make ``astrostack/debian:bookworm`` unless it exists as the current recipe makes it;
    return its id."""
    if not force and _label(BASE_IMAGE) == base_recipe_digest():
        return image_digest(BASE_IMAGE)
    if shutil.which("debootstrap") is None:
        raise LocalCloudError("debootstrap is not installed", hint="apt-get install -y debootstrap")
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=paths.local_dir()) as work:
        rootfs = Path(work) / "rootfs"
        _debootstrap(rootfs, progress)
        _trim_rootfs(rootfs)
        _import_rootfs(rootfs, BASE_IMAGE, progress)
    return image_digest(BASE_IMAGE)


def _label(tag: str) -> Optional[str]:
    """The recipe label of a local image (None: no such image, or built without it)."""
    try:
        return (_client().images.get(tag).labels or {}).get(RECIPE_LABEL)
    except docker.errors.ImageNotFound:
        return None


def _trim_rootfs(rootfs: Path) -> None:
    for pattern in BASE_LEFTOVERS:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for relative, text in APT_CLEAN_CONF.items():
        (rootfs / relative).write_text(text)


def _debootstrap(rootfs: Path, progress: Progress) -> None:
    """Run ``debootstrap --variant=minbase`` into ``rootfs``."""
    command = ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror()]
    _say(progress, "$ " + " ".join(command))
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=DEBOOTSTRAP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LocalCloudError(f"debootstrap did not finish within {DEBOOTSTRAP_TIMEOUT_S} s",
                              hint=f"check the mirror {mirror()}") from exc
    for line in done.stdout.splitlines():
        _say(progress, line)
    if done.returncode != 0:
        last = (done.stdout.strip().splitlines() or ["no output"])[-1]
        raise LocalCloudError(f"debootstrap failed (exit {done.returncode}): {last}",
                              hint="set ASTROSTACK_DEBIAN_MIRROR to a reachable mirror")


def _import_rootfs(rootfs: Path, tag: str, progress: Progress) -> None:
    """``tar -C rootfs -c . | docker import - tag`` through the SDK."""
    _say(progress, f"importing {rootfs} as {tag}")
    with tempfile.TemporaryFile(dir=rootfs.parent) as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(str(rootfs), arcname=".")
        archive.seek(0)
        repository, _, image_tag = tag.partition(":")
        _client().api.import_image_from_data(archive, repository=repository, tag=image_tag,
                                             changes=[f"LABEL {RECIPE_LABEL}={base_recipe_digest()}"])
    if not image_exists(tag):
        raise LocalCloudError(f"docker import of {rootfs} did not create {tag}")


# The label that says which version of images/<name>/ an image was built from.
RECIPE_LABEL = "org.astrostack.recipe-sha256"


def recipe_digest(name: str) -> str:
    """sha256 over every file of ``images/<name>/`` (relative path and content) and the
    base image's recipe (every image is built FROM it)."""
    root = paths.images_dir() / name
    digest = hashlib.sha256(base_recipe_digest().encode() + b"\0")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def built_from_current_recipe(name: str) -> bool:
    """True if ``astrostack/<name>:latest`` exists and was built from images/<name>/ as it is now
    (an image built before its recipe changed, or by hand without the label, is not)."""
    return _label(f"astrostack/{name}:latest") == recipe_digest(name)


def build(name: str, progress: Progress = None, *, context: Path | None = None,
          buildargs: dict | None = None) -> str:
    """Build ``images/<name>/Dockerfile`` as ``astrostack/<name>:latest``; return its id.

    The image is labelled with its recipe's digest (:func:`built_from_current_recipe`).
    Every line of the build log goes to ``progress``. A failing step raises a
    one-line :class:`LocalCloudError` naming the step and the error.
    """
    recipe = paths.images_dir() / name
    context = context or recipe
    if not (context / "Dockerfile").is_file():
        raise LocalCloudError(f"no Dockerfile in {context}")
    tag = f"astrostack/{name}:latest"
    labels = {RECIPE_LABEL: recipe_digest(name)} if (recipe / "Dockerfile").is_file() else {}
    if not (context / "requirements.txt").is_file():
        return _build_context(context, tag, progress, buildargs, labels)
    with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as work:
        copy = Path(work) / name
        shutil.copytree(context, copy, symlinks=True)
        download_wheels(copy / "requirements.txt", copy / "wheels", progress)
        return _build_context(copy, tag, progress, buildargs, labels)


def _build_context(context: Path, tag: str, progress: Progress, buildargs: dict | None,
                   labels: dict[str, str]) -> str:
    stream = _client().api.build(path=str(context), tag=tag, rm=True, forcerm=True,
                                 decode=True, buildargs=buildargs or {}, labels=labels)
    _follow_build(stream, tag, progress)
    return image_digest(tag)


def download_wheels(requirements: Path, target: Path, progress: Progress = None) -> None:
    """The wheels of REQUIREMENTS (and their dependencies) for the base image's
    Python on x86_64 Linux, by this machine's pip, into TARGET."""
    platforms = [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(target), "--only-binary=:all:",
               *platforms, "--python-version", BASE_PYTHON, "--implementation", "cp", "-r", str(requirements)]
    _say(progress, f"downloading the wheels of {requirements}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=WHEELS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LocalCloudError(f"pip download of {requirements} did not finish within {WHEELS_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or ["no message"]
        raise LocalCloudError(f"pip download of {requirements} failed: {errors[-1]}",
                              hint="this machine's pip must reach PyPI (or an index of its pip.conf)")


def _follow_build(stream: Iterable[dict], tag: str, progress: Progress) -> None:
    """Relay a decoded build stream; raise on its first error with the failing step."""
    step = "(before the first step)"
    for chunk in stream:
        line = chunk.get("stream", "").rstrip("\n")
        if line.startswith("Step "):
            step = line
        if line:
            _say(progress, line)
        if "error" in chunk:
            message = chunk["error"].strip().replace("\n", " ")
            raise LocalCloudError(f"building {tag} failed at {step}: {message}")


def _say(progress: Progress, line: str) -> None:
    """Send one line to the progress callback when there is one."""
    if progress is not None:
        progress(line)



def recipes() -> list[str]:
    """Image recipes under images/ (folders with a Dockerfile)."""
    return sorted(p.parent.name for p in paths.images_dir().glob("*/Dockerfile"))


def split_reference(reference: str) -> tuple[str, str]:
    """(repository, tag) of an image reference; the tag defaults to latest."""
    last = reference.rsplit("/", 1)[-1]
    if ":" in last:
        repository, _, tag = reference.rpartition(":")
        return repository, tag
    return reference, "latest"


def has_registry_host(reference: str) -> bool:
    """True when REFERENCE names its registry (``host:port/...`` or ``host.domain/...``), as Docker decides."""
    first, _, rest = reference.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost")


def push(name: str, registry: str, progress: Progress = None, *, untag: bool = False) -> tuple[str, str]:
    """Tag ``astrostack/NAME:latest`` (or a full reference) for REGISTRY, push it;
    return the pushed reference and its registry digest (UNTAG: drop the local
    tag made for the push afterwards)."""
    source = name if "/" in name else f"astrostack/{name}:latest"
    if not image_exists(source):
        raise LocalCloudError(f"no local image {source}; build it first: astrostack image build {name}")
    repository, tag = split_reference(source)
    target = f"{registry}/{repository}"
    client = _client()
    client.images.get(source).tag(target, tag=tag)
    _say(progress, f"pushing {source} to {registry}")
    try:
        for chunk in client.api.push(target, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise LocalCloudError(f"push of {target}:{tag} to {registry} failed: {chunk['error'].strip()}")
        return f"{target}:{tag}", registry_digest(f"{target}:{tag}")
    finally:
        if untag:
            client.api.remove_image(f"{target}:{tag}", noprune=True)


def registry_digest(reference: str) -> str:
    """The digest a registry holds for REFERENCE; LocalCloudError if it has none."""
    try:
        return _client().images.get_registry_data(reference).id
    except docker.errors.DockerException as exc:
        raise LocalCloudError(f"registry has no {reference}: {' '.join(str(exc).split())}") from None


def ensure_in_registry(image: str, registry: str, note: Callable[[str], None] = lambda m: None) -> tuple[str, str]:
    """Make the application IMAGE pullable from REGISTRY, as the hosts will pull it.

    An image this machine's Docker engine has is pushed (layers the registry
    has are not sent again); otherwise the registry must already hold it.
    Returns the reference the hosts pull and its registry digest.
    """
    if image_exists(image) and not has_registry_host(image):
        return push(image, registry, progress=note)
    repository, tag = split_reference(image)
    reference = image if has_registry_host(image) else f"{registry}/{repository}:{tag}"
    try:
        return reference, registry_digest(reference)
    except LocalCloudError as exc:
        raise PrecheckFailed(f"application.image: {image} is neither on this machine nor in the registry "
                             f"({exc.message})", hint="build or pull it here, or push it to the registry") from None
