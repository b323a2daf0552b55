"""The local cloud's entries in clouds.yaml, merged into the user's file.

``astrostack-local`` (the user ``astrostack`` in project ``astrostack``) is
what ``cloud: local`` uses; ``astrostack-local-admin`` is for tests and the
local cloud's own bootstrap. Other entries of the file are kept; the file is
written atomically with mode 0600 (it holds passwords).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from astrostack import cloud
from astrostack.errors import LocalCloudError
from astrostack.local import credentials, layout

USER_CLOUD = cloud.LOCAL_CLOUD_ENTRY
ADMIN_CLOUD = cloud.LOCAL_ADMIN_ENTRY
CONFIG_ENV = "OS_CLIENT_CONFIG_FILE"


def clouds_yaml_path() -> Path:
    """$OS_CLIENT_CONFIG_FILE if set, else ~/.config/openstack/clouds.yaml."""
    override = os.environ.get(CONFIG_ENV)
    return Path(override) if override else Path.home() / ".config" / "openstack" / "clouds.yaml"


def cloud_entry(username: str, password: str, project: str) -> dict:
    return {
        "auth": {
            "auth_url": f"{layout.api_url('keystone')}/v3",
            "username": username,
            "password": password,
            "project_name": project,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": layout.REGION,
        "identity_api_version": 3,
        "interface": "public",
    }


def local_entries(secrets: dict[str, str]) -> dict[str, dict]:
    return {
        USER_CLOUD: cloud_entry("astrostack", secrets["keystone_astrostack"], "astrostack"),
        ADMIN_CLOUD: cloud_entry("admin", secrets["keystone_admin"], "admin"),
    }


def merged(existing: dict, entries: dict[str, dict]) -> dict:
    """The file's content with our entries set and every other entry and key kept."""
    result = dict(existing)
    clouds = dict(result.get("clouds") or {})
    clouds.update(entries)
    result["clouds"] = clouds
    return result


def read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LocalCloudError(f"{path} is not valid YAML: {exc}".splitlines()[0],
                              hint="fix it; astrostack only adds its two entries") from exc
    if not isinstance(content, dict) or not isinstance(content.get("clouds", {}), dict):
        raise LocalCloudError(f"{path} must be a mapping with a `clouds` mapping")
    return content


def write(path: Path | None = None, secrets: dict[str, str] | None = None) -> Path:
    """Merge the local cloud's entries into clouds.yaml (0600, atomic); return its path."""
    path = path or clouds_yaml_path()
    content = merged(read(path), local_entries(secrets or credentials.load()))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    credentials.write_private(path, yaml.safe_dump(content, default_flow_style=False, sort_keys=False))
    return path
