"""What every command shares: consoles, JSON output, spec loading."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from astrostack.spec import ClusterSpec, load_spec

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """One JSON document on stdout (for --json)."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def spec_from_path(path: str) -> ClusterSpec:
    return load_spec(path)
