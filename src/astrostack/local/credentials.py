"""The local cloud's generated secrets: passwords, keys, the metadata secret.

Generated once, kept in ``LOCAL/etc/credentials.json`` (mode 0600) and read by
the config renderer, the bootstrap and clouds.yaml. Never in the repository.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from astrostack.errors import LocalCloudError
from astrostack.local import layout

# Database users (one per service; Nova's user owns its three databases).
DB_USERS = ("keystone", "placement", "glance", "nova", "neutron", "cinder", "heat")
# Keystone users in the `service` project.
SERVICE_USERS = ("placement", "glance", "nova", "neutron", "cinder", "heat")
SECRET_NAMES = (
    *(f"db_{user}" for user in DB_USERS),
    *(f"keystone_{user}" for user in SERVICE_USERS),
    "keystone_admin",
    "keystone_astrostack",
    "keystone_heat_domain_admin",
    "rabbitmq",
    "metadata_proxy_shared_secret",
    "heat_auth_encryption_key",
)


def credentials_path() -> Path:
    return layout.etc_dir() / "credentials.json"


def load() -> dict[str, str]:
    """Every secret, generating (and saving) the missing ones."""
    path = credentials_path()
    stored = _read(path)
    missing = [name for name in SECRET_NAMES if name not in stored]
    if missing:
        stored.update({name: _generate(name) for name in missing})
        write_private(path, json.dumps(stored, indent=2, sort_keys=True) + "\n")
    return stored


def _generate(name: str) -> str:
    # Heat's auth_encryption_key must be exactly 32 characters.
    return secrets.token_hex(16) if name == "heat_auth_encryption_key" else secrets.token_urlsafe(18)


def _read(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LocalCloudError(f"{path} is not valid JSON: {exc}",
                              hint="restore it, or remove LOCAL to start from nothing") from exc
    if not isinstance(data, dict):
        raise LocalCloudError(f"{path} must hold a JSON object")
    return data


def write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically (temp file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


