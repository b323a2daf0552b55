"""Where astrostack keeps its files (state, keys, local cloud, benchmarks) and
where it finds the files it ships (Heat templates, cloud-init, image recipes).

``ASTROSTACK_HOME`` overrides the user data directory, so tests and CI can
use a throw-away tree. A data folder that is a file, sits below a file or
cannot be written is one line of :class:`DataDirError` (exit 2), said when a
command first needs it; offline commands (``render``, ``validate``) never do.

The shipped files are package data of ``astrostack`` (``_data/NAME``; in the
repository, links to the top-level folders ``heat_templates/``,
``cloud_init/`` and ``images/``) and are found through
:mod:`importlib.resources`, so an installed wheel finds its own copies.
"""

from __future__ import annotations

import errno
import os
from importlib import resources
from pathlib import Path

from astrostack.errors import AstrostackError, DataDirError, show_path

HOME_VARIABLE = "ASTROSTACK_HOME"


def home_path() -> Path:
    """The data folder's path, without creating or checking it."""
    override = os.environ.get(HOME_VARIABLE)
    if override:
        return Path(os.path.abspath(os.path.expanduser(override)))
    import platformdirs  # only when the default is needed

    return Path(platformdirs.user_data_dir("astrostack"))


def home() -> Path:
    """The data folder, created (mode 0700) if needed; :class:`DataDirError` when it cannot be used."""
    base = home_path()
    _ensure_folder(base, base)
    return base


def subdir(name: str) -> Path:
    base = home()
    path = base / name
    _ensure_folder(path, base)
    return path


def state_dir() -> Path:
    return subdir("clusters")


def local_dir() -> Path:
    return subdir("local")


def _ensure_folder(path: Path, base: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise _data_dir_error(base, f"{show_path(path)} is a file, not a folder") from None
    except OSError as exc:
        raise _data_dir_error(base, f"{show_path(path)} cannot be created ({_reason(exc)})") from None
    if not path.is_dir():
        raise _data_dir_error(base, f"{show_path(path)} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise _data_dir_error(base, f"{show_path(path)} is not writable")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return exc.strerror or exc.__class__.__name__


def _data_dir_error(base: Path, problem: str) -> DataDirError:
    where = (f"{HOME_VARIABLE}={show_path(base)}" if os.environ.get(HOME_VARIABLE)
             else f"the data folder {show_path(base)}")
    return DataDirError(f"{where}: {problem}",
                        hint=f"set {HOME_VARIABLE} to a folder you can write in, e.g. {HOME_VARIABLE}=$HOME/astrostack")


# Shipped files ---------------------------------------------------------------------


def heat_templates_dir() -> Path:
    return data_dir("heat_templates")


def cloud_init_dir() -> Path:
    return data_dir("cloud_init")


def images_dir() -> Path:
    return data_dir("images")


def data_dir(name: str) -> Path:
    """The shipped folder NAME (package data ``astrostack/_data/NAME``) as a file-system path."""
    folder = resources.files("astrostack") / "_data" / name
    if not isinstance(folder, Path) or not folder.is_dir():
        raise AstrostackError(f"astrostack's {name}/ files are missing from its installation ({folder})",
                              hint="reinstall astrostack from a wheel or the repository; a zipped install "
                                   "is not supported")
    return folder
