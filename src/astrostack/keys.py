"""The per-cluster SSH key pair a user logs in with.

Made by ``astrostack up`` (never by an offline command) when the spec names
no Nova keypair: the private key stays in astrostack's data directory, only
the public key travels to the cloud (as a stack parameter).

A key is never replaced silently: an existing private key is kept whatever
happens (a missing ``.pub`` is derived from it again, a ``.pub`` that does not
match it is rewritten from it), and a private key that cannot be read, or a
``.pub`` left without its private key, stops with one line saying what to do.
Private keys are mode 0600 whatever they were before.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from astrostack import paths
from astrostack.errors import InvalidInput, show_path

PRIVATE_MODE = 0o600


def key_path(cluster: str) -> Path:
    return paths.subdir("keys") / f"{cluster}_ed25519"


def ensure_cluster_key(cluster: str) -> tuple[Path, str]:
    """Return (private key path, public key line), creating the pair only if neither exists."""
    private = key_path(cluster)
    public = private.with_suffix(".pub")
    if not _exists(private):
        if _exists(public):
            raise InvalidInput(f"{show_path(public)} exists without its private key {show_path(private)}; "
                               "not replacing it",
                               hint=f"restore the private key, or remove {show_path(public)} to get a new pair")
        if not _write_new_private_key(private):  # another process made it meanwhile: use theirs
            return ensure_cluster_key(cluster)
    line = public_line(private, cluster)
    if not _exists(public) or public.read_text(errors="replace").split()[:2] != line.split()[:2]:
        _write_atomically(public, f"{line}\n".encode(), 0o644)
    return private, line


def public_line(private: Path, cluster: str) -> str:
    """The OpenSSH public key line of the private key at PRIVATE (mode set to 0600 on the way)."""
    from cryptography.hazmat.primitives import serialization

    _make_private(private)
    try:
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise InvalidInput(f"{show_path(private)}: cannot read this private key ({exc.__class__.__name__}); "
                           "not replacing it", hint="fix or move it away; `up` makes a new pair only when "
                           "there is none") from None
    blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{blob.decode()} astrostack-{cluster}"


def _make_private(private: Path) -> None:
    info = private.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"{show_path(private)} is not a regular file; not using it as a private key")
    if stat.S_IMODE(info.st_mode) != PRIVATE_MODE:
        os.chmod(private, PRIVATE_MODE)


def _write_new_private_key(private: Path) -> bool:
    """Write a new private key at PRIVATE unless one appeared there; True if this call wrote it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    return _write_atomically(private, pem, PRIVATE_MODE, replace=False)


def _write_atomically(target: Path, data: bytes, mode: int, *, replace: bool = True) -> bool:
    """Write DATA to TARGET through a temporary file; with replace=False never over an existing file."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, target)
            return True
        try:
            os.link(temporary, target)  # atomic, and fails if TARGET exists
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def forget_cluster_key(cluster: str) -> None:
    private = key_path(cluster)
    for path in (private, private.with_suffix(".pub")):
        path.unlink(missing_ok=True)
