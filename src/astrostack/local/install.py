"""Install what the local cloud runs: Debian packages, the OpenStack venv, astrostack_localcloud.

The venv (``LOCAL/openstack-venv``) is pinned by the constraints file shipped
as package data, so every machine runs the same releases. The package
``astrostack_localcloud`` (the code OpenStack loads: WSGI launcher, ML2 and
Cinder drivers, Nova driver, network agent) is installed into it from a copy
of its source with a generated ``pyproject.toml`` that declares its entry
points, and re-installed whenever that source changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Callable

from astrostack.errors import LocalCloudError
from astrostack.local import commands, layout

Progress = Callable[[str], None]

OPENSTACK_REQUIREMENTS = (
    "keystone==30.0.0",
    "openstack-placement==16.0.0",
    "glance==33.0.0",
    "nova==34.0.0",
    "neutron==29.0.0",
    "cinder==29.0.0",
    "openstack-heat==27.0.1",
    # neutron 29.0.0's wheel omits pyroute2 (neutron-db-manage fails without it).
    "pymysql", "cheroot", "pyroute2", "python-memcached", "docker",
    # setuptools builds astrostack_localcloud without build isolation: it needs wheel.
    "wheel",
)
# Debian packages (binary that proves it is installed -> package).
DEBIAN_PACKAGES = {
    "/usr/sbin/mysqld": "mariadb-server",
    "/usr/lib/rabbitmq/bin/rabbitmq-server": "rabbitmq-server",
    "/usr/bin/memcached": "memcached",
    "/usr/sbin/dnsmasq": "dnsmasq-base",
    "/usr/sbin/iptables": "iptables",
    "/usr/sbin/ipset": "ipset",
    "/usr/bin/docker-registry": "docker-registry",
    "/usr/sbin/dockerd": "docker.io",
    "/usr/bin/curl": "curl",
    # The network agent clears a floating IP's conntrack entries when it moves.
    "/usr/sbin/conntrack": "conntrack",
    # The VM image is built FROM a debootstrapped base image (astrostack.images).
    "/usr/sbin/debootstrap": "debootstrap",
}
LOCALCLOUD_PACKAGE = "astrostack_localcloud"
LOCALCLOUD_DIST = "astrostack-localcloud"
PIP_TIMEOUT_S = 1200
APT_TIMEOUT_S = 1200
STAMP = "installed.sha256"


def constraints_file() -> Path:
    """The pinned versions of every package in the OpenStack venv (package data)."""
    return Path(str(resources.files("astrostack.local") / "data" / "openstack-constraints.txt"))


# --- Debian packages ---------------------------------------------------------


def missing_debian_packages() -> list[str]:
    return sorted({package for binary, package in DEBIAN_PACKAGES.items() if not Path(binary).exists()})


def ensure_debian_packages(say: Progress) -> None:
    """apt-get install what is missing (as root); otherwise say exactly what to install."""
    missing = missing_debian_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise LocalCloudError(f"Debian packages missing: {' '.join(missing)}",
                              hint=f"run as root, or: sudo apt-get install -y {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = layout.log_path("install")
    say(f"installing Debian packages: {' '.join(missing)} (apt-get, log {log})")
    commands.run(["apt-get", "update"], "apt-get update", timeout=APT_TIMEOUT_S, env=env, log=log, say=say)
    # Debian's postinst scripts would start the daemons with their stock configs.
    with _no_daemon_starts():
        commands.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                     "apt-get install", timeout=APT_TIMEOUT_S, env=env, log=log, say=say)
    say("Debian packages installed")


class _no_daemon_starts:
    """A policy-rc.d that forbids invoke-rc.d to start services during apt-get install."""

    path = Path("/usr/sbin/policy-rc.d")

    def __enter__(self) -> None:
        self.created = not self.path.exists()
        if self.created:
            self.path.write_text("#!/bin/sh\nexit 101\n")
            self.path.chmod(0o755)

    def __exit__(self, *exc_info: object) -> None:
        if self.created:
            self.path.unlink(missing_ok=True)


# --- the OpenStack venv -------------------------------------------------------


def _constraints_digest() -> str:
    text = constraints_file().read_text() + "\n".join(OPENSTACK_REQUIREMENTS)
    return hashlib.sha256(text.encode()).hexdigest()


def venv_current() -> bool:
    stamp = layout.venv_dir() / STAMP
    return stamp.exists() and stamp.read_text().strip() == _constraints_digest()


def ensure_openstack_venv(say: Progress) -> Path:
    """Create the venv and pip install the pinned releases, unless already done."""
    venv = layout.venv_dir()
    if venv_current():
        return venv
    log = layout.log_path("install")
    if not layout.venv_python().exists():
        say(f"creating the OpenStack venv {venv}")
        commands.run([sys.executable, "-m", "venv", str(venv)], "create the OpenStack venv", timeout=180)
    say(f"installing Keystone, Placement, Glance, Nova, Neutron, Cinder, Heat into {venv} "
        f"(pinned; about 1-3 min, 750 MB; log {log})")
    pip = [str(layout.venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    commands.run([*pip, "-c", str(constraints_file()), *OPENSTACK_REQUIREMENTS],
                 "pip install of the OpenStack releases", timeout=PIP_TIMEOUT_S, log=log, say=say)
    (venv / STAMP).write_text(_constraints_digest() + "\n")
    say("OpenStack venv ready")
    return venv


# --- astrostack_localcloud ------------------------------------------------------


def localcloud_source() -> Path:
    """The package's source folder (package data of the astrostack wheel)."""
    import astrostack_localcloud

    return Path(astrostack_localcloud.__file__).resolve().parent


def source_digest(source: Path) -> str:
    """A hash of every file of the package (paths and contents), caches left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.0.0+{digest}"
description = "The code OpenStack loads on astrostack's local cloud"

[project.entry-points."neutron.ml2.mechanism_drivers"]
astrostack = "astrostack_localcloud.neutron_mech:AstrostackMechanismDriver"

[project.scripts]
astrostack-localnet = "astrostack_localcloud.net.agent:main"

[tool.setuptools.packages.find]
include = ["astrostack_localcloud*"]
"""


def localcloud_current(source: Path) -> bool:
    stamp = layout.venv_dir() / "astrostack-localcloud.sha256"
    return stamp.exists() and stamp.read_text().strip() == source_digest(source)


def ensure_localcloud_package(say: Progress) -> bool:
    """pip install astrostack_localcloud into the venv if its source changed; True if it did."""
    source = localcloud_source()
    if localcloud_current(source):
        return False
    digest = source_digest(source)
    say(f"installing {LOCALCLOUD_PACKAGE} ({digest[:12]}) into the OpenStack venv")
    with tempfile.TemporaryDirectory(prefix="astrostack-localcloud-") as work:
        project = Path(work)
        shutil.copytree(source, project / LOCALCLOUD_PACKAGE,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (project / "pyproject.toml").write_text(PYPROJECT.format(dist=LOCALCLOUD_DIST, digest=digest[:12]))
        commands.run([str(layout.venv_python()), "-m", "pip", "install", "--disable-pip-version-check",
                      "--no-deps", "--no-build-isolation", "--force-reinstall", str(project)],
                     f"pip install {LOCALCLOUD_PACKAGE}", timeout=300, log=layout.log_path("install"), say=say)
    (layout.venv_dir() / "astrostack-localcloud.sha256").write_text(digest + "\n")
    return True


def venv_site_packages() -> Path:
    found = sorted((layout.venv_dir() / "lib").glob("python3*/site-packages"))
    if not found:
        raise LocalCloudError(f"no site-packages in {layout.venv_dir()}", hint="remove the venv and start again")
    return found[-1]


def venv_can_import(dotted: str) -> bool:
    """True if ``module`` or ``module.Attr`` imports in the OpenStack venv."""
    module, _, attribute = dotted.rpartition(".") if _looks_like_class(dotted) else (dotted, "", "")
    code = f"import importlib; m = importlib.import_module({module!r})"
    if attribute:
        code += f"; getattr(m, {attribute!r})"
    try:
        done = subprocess.run([str(layout.venv_python()), "-c", code], capture_output=True,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _looks_like_class(dotted: str) -> bool:
    return dotted.rpartition(".")[2][:1].isupper()


def install_all(say: Progress) -> bool:
    """Everything the local cloud needs on disk; idempotent and quick when done.
    True if astrostack_localcloud was (re)installed: services running the old code need a restart."""
    ensure_debian_packages(say)
    ensure_openstack_venv(say)
    return ensure_localcloud_package(say)
