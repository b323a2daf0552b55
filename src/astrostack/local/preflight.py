"""What a real OpenStack VM's kernel has and this machine's kernel lacks.

The local cloud's VMs are containers sharing this machine's kernel. Each
check below reads the kernel's own reports (``/proc``, ``/lib/modules``) and
says which substitute the local cloud uses when a feature is missing, so a
newcomer sees a clear message at ``local up`` instead of a hang hours later.

The checks are pure functions over a :class:`HostView` (injectable file
readers), so unit tests give them fixed file contents and need no root.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

CAP_SYS_RESOURCE = 24  # linux/capability.h


@dataclass(frozen=True)
class Feature:
    """One row of the preflight report."""

    feature: str
    available: bool
    substitute: str
    detail: str


def _read_text(path: str) -> Optional[str]:
    """A file's text, or None if it cannot be read."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _aead_probe(name: str) -> Optional[bool]:
    """Ask the kernel crypto API (AF_ALG) for an AEAD; None when AF_ALG is absent."""
    if not hasattr(socket, "AF_ALG"):
        return None
    try:
        sock = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    except OSError:
        return None
    try:
        sock.bind(("aead", name))
    except OSError:
        return False
    finally:
        sock.close()
    return True


@dataclass(frozen=True)
class HostView:
    """How the checks see the host: file reader, existence test, crypto probe."""

    read_text: Callable[[str], Optional[str]] = _read_text
    exists: Callable[[str], bool] = os.path.exists
    aead_probe: Callable[[str], Optional[bool]] = _aead_probe
    kernel_release: str = field(default_factory=lambda: os.uname().release)


def _filesystems(view: HostView) -> set[str]:
    """Filesystem types the kernel knows now (``/proc/filesystems``)."""
    text = view.read_text("/proc/filesystems") or ""
    return {line.split()[-1] for line in text.splitlines() if line.split()}


def _crypto_names(view: HostView) -> set[str]:
    """Algorithm and driver names registered now (``/proc/crypto``)."""
    names = set()
    for line in (view.read_text("/proc/crypto") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("name", "driver"):
            names.add(value.strip())
    return names


def _module_names(view: HostView) -> set[str]:
    """Modules built in or loadable, from ``/lib/modules/<release>``."""
    base = f"/lib/modules/{view.kernel_release}"
    names = set()
    for index in ("modules.builtin", "modules.dep"):
        for line in (view.read_text(f"{base}/{index}") or "").splitlines():
            path = line.split(":", 1)[0].strip()
            if path:
                stem = Path(path).name.split(".ko")[0]
                names.add(stem.replace("-", "_"))
    return names


def check_encrypted_overlay(view: HostView) -> Feature:
    """ESP with AES-GCM over xfrm, which ``--opt encrypted`` overlays need.

    Seen from ``/proc/net/xfrm_stat`` (xfrm), then ``gcm(aes)`` in
    ``/proc/crypto``, an AF_ALG AEAD probe or a ``gcm`` module, and an
    ``esp4`` module. ESP itself leaves no trace in ``/proc``: without a module
    list, a kernel with xfrm and GCM is assumed to have ESP too.
    """
    has_xfrm = view.exists("/proc/net/xfrm_stat")
    modules = _module_names(view)
    gcm_sources = _gcm_sources(view, modules)
    esp_ok = "esp4" in modules or not modules
    available = has_xfrm and bool(gcm_sources) and esp_ok
    gcm_detail = ("via " + ", ".join(gcm_sources) if gcm_sources
                  else "not in /proc/crypto, AF_ALG or modules")
    esp_detail = ("esp4 module listed" if "esp4" in modules
                  else "esp4 not visible (no module list)" if not modules else "no esp4 module")
    detail = f"xfrm {'present' if has_xfrm else 'absent'}; gcm(aes) {gcm_detail}; {esp_detail}"
    return Feature("encrypted overlay (ESP/AES-GCM)", available,
                   "overlay.encrypted auto: the manager finds no ESP with AES-GCM in its kernel, creates "
                   "the overlay plain and says so (its traffic never leaves this machine); true fails",
                   detail)


def _gcm_sources(view: HostView, modules: set[str]) -> list[str]:
    """Where AES-GCM was seen: registered, instantiable through AF_ALG, or as a module."""
    sources = []
    if {"gcm(aes)", "rfc4106(gcm(aes))"} & _crypto_names(view):
        sources.append("/proc/crypto")
    if view.aead_probe("rfc4106(gcm(aes))"):
        sources.append("AF_ALG probe")
    if "gcm" in modules:
        sources.append("gcm module")
    return sources


def check_ipvs(view: HostView) -> Feature:
    """IPVS, behind Swarm service virtual IPs and the ingress routing mesh."""
    if view.exists("/proc/net/ip_vs"):
        available, detail = True, "/proc/net/ip_vs present"
    elif "ip_vs" in _module_names(view):
        available, detail = True, "ip_vs module listed (loaded on first use)"
    else:
        available, detail = False, "no /proc/net/ip_vs and no ip_vs module"
    return Feature("IPVS (service VIPs, routing mesh)", available,
                   "none needed: astrostack's services use --endpoint-mode dnsrr on every cloud", detail)


def check_nfs_client(view: HostView) -> Feature:
    """Kernel NFS client (``mount -t nfs``)."""
    return _filesystem_feature(view, "kernel NFS client", ("nfs", "nfs4"),
                               "the VM image's mount.nfs4: a real TCP connect to SERVER:2049, then the "
                               "hypervisor attaches the server VM's exported tree (images/vm/README.md)")


def check_nfs_server(view: HostView) -> Feature:
    """Kernel NFS server (``nfsd``)."""
    return _filesystem_feature(view, "kernel NFS server", ("nfsd",),
                               "the VM image's exportfs and nfs-server: exports registered with the "
                               "hypervisor, TCP 2049 listened on (images/vm/README.md)")


def check_fuse(view: HostView) -> Feature:
    """FUSE (user-space filesystems)."""
    feature = _filesystem_feature(view, "FUSE", ("fuse",), "none (FUSE filesystems unavailable)")
    if feature.available and not view.exists("/dev/fuse"):
        return Feature(feature.feature, False, feature.substitute,
                       feature.detail + "; but /dev/fuse is missing")
    return feature


def _filesystem_feature(view: HostView, name: str, fstypes: tuple[str, ...],
                        substitute: str) -> Feature:
    """A feature that is present when one of ``fstypes`` is registered or loadable."""
    known = _filesystems(view)
    found = [fstype for fstype in fstypes if fstype in known]
    if found:
        return Feature(name, True, substitute, f"{found[0]} in /proc/filesystems")
    loadable = [fstype for fstype in fstypes if fstype in _module_names(view)]
    if loadable:
        return Feature(name, True, substitute, f"{loadable[0]} module listed (loaded on first use)")
    return Feature(name, False, substitute,
                   f"{'/'.join(fstypes)} not in /proc/filesystems and no such module")


def check_privileged(view: HostView) -> Feature:
    """``docker run --privileged``: needs every capability in the bounding set."""
    bounding = _cap_bounding_set(view.read_text("/proc/self/status") or "")
    if bounding is None:
        return Feature("docker --privileged", False,
                       "--cap-add ALL --cap-drop SYS_RESOURCE plus unconfined seccomp/systempaths",
                       "CapBnd not found in /proc/self/status")
    has_resource = bool(bounding >> CAP_SYS_RESOURCE & 1)
    detail = f"CapBnd={bounding:016x}; CAP_SYS_RESOURCE {'present' if has_resource else 'missing'}"
    return Feature("docker --privileged", has_resource,
                   "--cap-add ALL --cap-drop SYS_RESOURCE plus unconfined seccomp/systempaths",
                   detail)


def _cap_bounding_set(status: str) -> Optional[int]:
    """The CapBnd mask from ``/proc/<pid>/status`` text."""
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return None


CHECKS = (check_encrypted_overlay, check_ipvs, check_nfs_client, check_nfs_server,
          check_fuse, check_privileged)


def run_preflight(view: Optional[HostView] = None) -> list[Feature]:
    """Every check, in a fixed order, against this host (or ``view``)."""
    view = view or HostView()
    return [check(view) for check in CHECKS]


def missing(features: list[Feature]) -> list[str]:
    """One line per missing feature: what is missing, the substitute, and why we think so."""
    return [f"{row.feature}: missing -> {row.substitute} ({row.detail})"
            for row in features if not row.available]
