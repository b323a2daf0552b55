"""`astrostack run`, `jobs` and `fetch`: jobs on a ready cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from astrostack.cli.common import console, print_json
from astrostack.errors import InvalidInput, show_path
from astrostack.yamlio import read_yaml


def register(root: typer.Typer) -> None:
    root.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(run)
    root.command("jobs")(jobs)
    root.command("fetch")(fetch)


def run(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Cluster name."),
    job: Optional[str] = typer.Argument(None, help="Job file (*.yaml: profile mpi, sagecal-mpi or task-map; - for standard "
                                        "input), or `-- CMD ARGS`."),
    np: Optional[int] = typer.Option(None, "--np", min=1, help="mpi: ranks (default: every node)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="sagecal-mpi: worker ranks (default: nodes - 1)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="sagecal-mpi: threads per rank, -n (default: vCPUs / ranks per host)."),
    timeout: Optional[int] = typer.Option(None, "--timeout", min=1, help="Seconds before the job is stopped."),
    job_name: Optional[str] = typer.Option(None, "--name", help="Label of the job."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run a job; its exit code is the job's. Example: astrostack run NAME -- /usr/local/bin/mpi_smoke"""
    from astrostack import job as jobs_lib
    from astrostack import state

    job_file, command = _split_job_argument(job, list(ctx.args))
    data = _job_data(job_file, command)
    if data.get("profile") == "task-map":  # a task-queue cluster's job: astrostack.taskqueue
        from astrostack.cli.taskqueue_cmds import run_task_map

        return run_task_map(name, data, show_path(job_file) if job_file else "command line", timeout=timeout,
                            job_name=job_name, as_json=as_json)
    for key, value in (("np", np), ("workers", workers), ("threads", threads), ("timeout_s", timeout),
                       ("name", job_name)):
        if value is not None:
            data[key] = value
    spec = jobs_lib.job_from_dict(data, source=show_path(job_file) if job_file else "command line")
    result = jobs_lib.run_job(state.load(name), spec)
    if as_json:
        print_json(result.model_dump(mode="json"))
    else:
        console.out(result.output_tail, end="", highlight=False)
        console.print(f"job {result.id}: exit {result.exit_code} in {result.seconds:.1f} s; folder {result.job_dir}",
                      highlight=False)
        if result.threads is not None:
            console.print(f"threads per rank (-n): {result.threads} ({result.threads_source})", highlight=False)
    jobs_lib.raise_for_exit(result)


def _split_job_argument(job: Optional[str], rest: list[str]) -> tuple[Optional[Path], list[str]]:
    """`run NAME JOB.yaml` or `run NAME -- CMD ARGS` (click hands CMD to JOB)."""
    if job is not None and (job.endswith((".yaml", ".yml")) or job == "-"):
        return Path(job), rest
    return None, ([job] if job is not None else []) + rest


def _job_data(job_file: Optional[Path], command: list[str]) -> dict:
    if job_file and command:
        raise InvalidInput("give a job file or `-- CMD ARGS`, not both")
    if command:
        return {"profile": "mpi", "command": command}
    if job_file is None:
        raise InvalidInput("no job: give a job file or `-- CMD ARGS`")
    from astrostack.job import resolve_upload

    data = read_yaml(job_file, "job")
    if not isinstance(data, dict):
        raise InvalidInput(f"{'<stdin>' if str(job_file) == '-' else show_path(job_file)}: a job is a mapping "
                           "with a `profile`")
    return resolve_upload(data, Path(".") if str(job_file) == "-" else job_file.parent)


def jobs(
    name: str = typer.Argument(..., help="Cluster name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Jobs run on a cluster, with their exit codes and times."""
    from astrostack import job as jobs_lib

    rows = jobs_lib.list_jobs(name)
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print(f"no jobs on {name} yet (astrostack run {name} -- CMD)")
    for row in rows:
        state_word = "ok" if row["exit_code"] == 0 else f"failed ({row['exit_code']})"
        threads = f" x {row['threads']} threads" if row.get("threads") else ""
        console.print(f"{row['id']:<40} {row['profile']:<12} {state_word:<12} {row['ranks']} ranks{threads}  "
                      f"{row['started']}", highlight=False)


def fetch(
    name: str = typer.Argument(..., help="Cluster name."),
    job_id: str = typer.Argument(..., help="Job id (see `astrostack jobs NAME`)."),
    out: Path = typer.Option(Path("."), "-o", "--out", help="Directory to copy the job folder into."),
) -> None:
    """Copy a job's folder (solutions, logs, per-rank figures, command line) out of the cluster."""
    from astrostack import job as jobs_lib

    target = jobs_lib.fetch(name, job_id, out)
    console.print(f"copied to {target}", highlight=False)
