"""The per-cluster SSH key pair a user logs in with.

Generated on the user's machine when the spec names no Nova keypair: the
private key stays in astrostack's data directory (mode 0600), only the public
key travels to the cloud (as a stack parameter).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from astrostack import paths


def key_path(cluster: str) -> Path:
    return paths.subdir("keys") / f"{cluster}_ed25519"


def ensure_cluster_key(cluster: str) -> tuple[Path, str]:
    """Return (private key path, public key line), creating the pair once."""
    private = key_path(cluster)
    public = private.with_suffix(".pub")
    if not (private.exists() and public.exists()):
        _write_new_pair(cluster, private, public)
    return private, public.read_text().strip()


def _write_new_pair(cluster: str, private: Path, public: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public.write_text(f"{line} astrostack-{cluster}\n")


def forget_cluster_key(cluster: str) -> None:
    private = key_path(cluster)
    for path in (private, private.with_suffix(".pub")):
        path.unlink(missing_ok=True)
