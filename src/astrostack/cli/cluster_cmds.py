"""Cluster lifecycle commands (up, status, down, ...)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    """Lifecycle commands are added as the lifecycle library lands."""
