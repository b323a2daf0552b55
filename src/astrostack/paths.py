"""Where astrostack keeps its files (state, local cloud, benchmarks).

``ASTROSTACK_HOME`` overrides the user data directory, so tests and CI can
use a throw-away tree.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def home() -> Path:
    override = os.environ.get("ASTROSTACK_HOME")
    base = Path(override) if override else Path(platformdirs.user_data_dir("astrostack"))
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    return base


def subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def state_dir() -> Path:
    return subdir("clusters")


def local_dir() -> Path:
    return subdir("local")


def heat_templates_dir() -> Path:
    return _resource_dir("heat_templates")


def cloud_init_dir() -> Path:
    return _resource_dir("cloud_init")


def images_dir() -> Path:
    return _resource_dir("images")


def _resource_dir(name: str) -> Path:
    """Top-level project folders; installed copies live under the package."""
    candidate = PROJECT_ROOT / name
    if candidate.is_dir():
        return candidate
    packaged = Path(__file__).resolve().parent / "_data" / name
    return packaged
