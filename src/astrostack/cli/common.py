"""What every command shares: consoles, JSON output, spec loading.

Cheap to import (the CLI's start time depends on it): the consoles are made
when first used, the spec model is imported when a spec is loaded.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from astrostack.spec import ClusterSpec

_consoles: dict[str, Console] = {}


def _console(name: str) -> Console:
    if name not in _consoles:
        from rich.console import Console

        _consoles[name] = Console(stderr=name == "err_console", soft_wrap=True, emoji=False)
    return _consoles[name]


def __getattr__(name: str) -> Any:
    """``console`` (stdout) and ``err_console`` (stderr), made on first use."""
    if name in ("console", "err_console"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def print_json(data: Any) -> None:
    """One JSON document on stdout (for --json)."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """One `warning:` line on stderr (user text in MESSAGE is shown, never interpreted)."""
    from rich.markup import escape

    from astrostack.errors import one_line

    _console("err_console").print(f"[yellow]warning:[/yellow] {escape(one_line(message))}", highlight=False)


def spec_from_path(path: str) -> ClusterSpec:
    """Load and validate the spec at PATH (``-``: standard input); its warnings go to stderr."""
    from astrostack.spec import load_spec

    spec = load_spec(path)
    for message in spec.warnings():
        warn(message)
    return spec
