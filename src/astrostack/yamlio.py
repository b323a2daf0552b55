"""Reading the user's YAML files (specs, matrices, jobs) with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from astrostack.errors import InvalidInput


def parse_yaml(text: str, source: str, error: type[InvalidInput] = InvalidInput) -> Any:
    """YAML text -> data; a syntax error becomes ERROR naming SOURCE and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise error(f"{source}:{where} is not valid YAML ({problem})") from None


def read_yaml(path: Path, what: str, error: type[InvalidInput] = InvalidInput) -> Any:
    """A YAML file -> data; a missing or unreadable file becomes ERROR in one line."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc.__class__.__name__})") from None
    return parse_yaml(text, str(path), error)
