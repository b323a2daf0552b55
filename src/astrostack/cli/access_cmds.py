"""`astrostack exec`, `ssh` and `logs`: reach a running cluster."""

from __future__ import annotations

import os
import sys

import typer

from astrostack.cli.common import console
from astrostack.cluster import swarm
from astrostack.cluster.access import cluster_access, host_access
from astrostack.errors import InvalidInput, JobFailed


def register(root: typer.Typer) -> None:
    root.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(exec_cmd)
    root.command("ssh")(ssh)
    root.command("logs")(logs)


def exec_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Cluster name."),
    timeout: float = typer.Option(3600, help="Seconds before the command is stopped."),
    mpi: bool = typer.Option(False, "--mpi", help="Run the command under mpirun across every node."),
) -> None:
    """Run a command in the master container: astrostack exec NAME [--mpi] -- CMD ARGS..."""
    command = list(ctx.args)
    if not command:
        raise InvalidInput("no command given: astrostack exec NAME -- CMD ARGS...")
    spec, access = cluster_access(name)
    if mpi:  # the hostfile of the cluster as it is now, never a stale one
        swarm.write_hostfile(spec, access)
        command = swarm.mpirun_argv(spec, command)
    exit_code = swarm.stream_in_master(spec, access, command, timeout, sink=_write_through)
    if exit_code != 0:
        raise JobFailed(f"command exited {exit_code} on {name}", job_exit_code=exit_code)


def _write_through(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def ssh(
    name: str = typer.Argument(..., help="Cluster name."),
    host: str = typer.Argument("manager", help="manager (default), worker-N, nfs, or a private address."),
) -> None:
    """An interactive shell on a host of the cluster (others than the manager through it)."""
    argv = host_access(name, host).interactive_argv()
    os.execvp(argv[0], argv)


def logs(
    name: str = typer.Argument(..., help="Cluster name."),
    host: str = typer.Argument("manager", help="manager, worker-N or nfs."),
    lines: int = typer.Option(200, help="Lines from the end of each log."),
) -> None:
    """cloud-init output, the host's astrostack logs and its containers' logs."""
    script = (
        f"for f in /var/log/cloud-init-output.log /var/log/astrostack-nodes.log; do "
        f'[ -f "$f" ] && {{ echo "== $f"; tail -n {lines} "$f"; }}; done; '
        f'echo "== journal of docker"; journalctl -u docker --no-pager -n {lines} 2>/dev/null; '
        f"for c in $(docker ps -aq 2>/dev/null); do echo \"== container $(docker inspect -f '{{{{.Name}}}}' $c)\"; "
        f"docker logs --tail {lines} $c 2>&1; done; true"
    )
    console.out(host_access(name, host).run(script, timeout=120).output, end="", highlight=False)
