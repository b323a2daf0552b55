"""`astrostack connect`, and `run` of a task-map job: a task-queue cluster."""

from __future__ import annotations

import shlex
import sys
from typing import Any, Optional

import typer

from astrostack.cli.common import console, print_json


def register(root: typer.Typer) -> None:
    root.command("connect")(connect)


def connect(
    name: str = typer.Argument(..., help="Cluster name (a task-queue cluster)."),
    show_password: bool = typer.Option(False, "--show-password",
                                       help="Put the Redis password in the Redis addresses (read from the manager)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What a notebook needs: the Dask Client address (SSH tunnel or floating IP), the dashboard and Redis."""
    from astrostack.taskqueue.connect import connection

    found = connection(name, show_password=show_password)
    if as_json:
        print_json(found.as_dict())
        return
    lines = [
        f"tunnel      {' '.join(shlex.quote(part) for part in found.tunnel)}",
        f"client      Client({found.scheduler_through_tunnel!r})   # with the tunnel open",
        f"            Client({found.scheduler!r})   # from ssh.allowed_cidr",
    ]
    if found.dashboard:
        lines.append(f"dashboard   {found.dashboard}  (or http://127.0.0.1:8787/status through the tunnel)")
    for url in found.redis:
        lines.append(f"redis       {url}  (cluster network)")
    if found.redis_through_tunnel:
        lines.append(f"            {found.redis_through_tunnel}  (through the tunnel)")
    lines.append(f"versions    {found.versions}  (a Client must run the same dask and distributed)")
    lines += [f"note        {note}" for note in found.notes]
    console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


def run_task_map(name: str, data: dict[str, Any], source: str, *, timeout: Optional[int], job_name: Optional[str],
                 as_json: bool) -> None:
    """`astrostack run NAME job.yaml` for `profile: task-map` (called by job_cmds.run)."""
    from astrostack import state
    from astrostack.taskqueue import job as task_map

    for key, value in (("timeout_s", timeout), ("name", job_name)):
        if value is not None:
            data[key] = value
    job = task_map.task_map_from_dict(data, source=source)
    result = task_map.run_task_map(state.load(name), job, on_output=None if as_json else _write_through)
    if as_json:
        print_json(result.model_dump(mode="json", exclude={"output_tail"}))
    else:
        console.print(f"job {result.id}: {result.succeeded}/{result.tasks} tasks ok, {result.failed} failed, "
                      f"in {result.seconds:.1f} s ({result.tasks_per_s:.1f} tasks/s on {result.ranks} Dask workers); "
                      f"folder {result.job_dir}", highlight=False, markup=False)
    task_map.raise_for_exit(result)


def _write_through(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
