"""What a wheel ships and where astrostack finds its files.

scripts/check_wheel.sh goes further (a clean venv, every example rendered and
validated from the installed wheel); here: the files are package data, found
through importlib.resources, and the wheel holds every one of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from astrostack import paths
from astrostack.errors import DataDirError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("heat_templates", "cloud_init", "images")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folders_are_package_data_of_astrostack(name):
    folder = paths.data_dir(name)

    assert folder.parent == Path(__import__("astrostack").__file__).parent / "_data"
    # In the repository, the package data are the top-level folders themselves.
    assert folder.resolve() == (ROOT / name).resolve()


def test_the_accessors_name_the_same_folders():
    assert (paths.heat_templates_dir() / "cluster.yaml").is_file()
    assert (paths.cloud_init_dir() / "host.yaml.j2").is_file()
    assert (paths.images_dir() / "mpi-base" / "Dockerfile").is_file()


def _tracked(folder: str) -> set[str]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard",
                             folder], capture_output=True, text=True, check=True).stdout.split()
    return {name for name in listed if "__pycache__" not in name and (ROOT / name).is_file()}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = out.glob("astrostack-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_wheel_ships_every_template_script_and_recipe(wheel_names):
    for folder in SHIPPED:
        expected = {f"astrostack/_data/{name}" for name in _tracked(folder) if "/sagecal-src/" not in name}
        assert expected and expected <= wheel_names, sorted(expected - wheel_names)


def test_the_wheel_ships_whatever_lies_under_the_local_cloud_packages(wheel_names):
    for folder, prefix in (("src/astrostack/local", "astrostack/local/"),
                           ("src/astrostack_localcloud", "astrostack_localcloud/")):
        expected = {prefix + name.split(folder + "/", 1)[1] for name in _tracked(folder)}
        assert expected and expected <= wheel_names, sorted(expected - wheel_names)


def test_the_wheel_ships_no_caches(wheel_names):
    assert not [name for name in wheel_names if "__pycache__" in name or name.endswith(".pyc")]


# The data folder ----------------------------------------------------------------------


def test_a_file_shaped_home_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))

    with pytest.raises(DataDirError) as caught:
        paths.state_dir()
    assert str(caught.value).startswith(f"ASTROSTACK_HOME={tmp_path / 'home'}: {tmp_path / 'home'} is a file")


def test_a_home_below_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "file" / "home"))

    with pytest.raises(DataDirError, match="a part of the path is a file, not a folder"):
        paths.home()


def test_a_home_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as root, every folder is writable

    with pytest.raises(DataDirError, match="is not writable"):
        paths.home()


def test_a_relative_home_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ASTROSTACK_HOME", "rel")

    assert paths.home() == tmp_path / "rel"
