"""`astrostack bench ...`: Table 1 benchmarks (run, report, schedule)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from astrostack.bench import db
from astrostack.cli.common import console, err_console, print_json
from astrostack.errors import BenchFailed, InvalidInput

app = typer.Typer(help="Benchmarks like the paper's Table 1: deploy, run, destroy a matrix of cluster sizes.",
                  no_args_is_help=True)

DB_HELP = "Bench database (SQLite); default: <ASTROSTACK_HOME>/bench/bench.sqlite."


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command("run")
def run(
    matrix: str = typer.Argument(..., help="Bench matrix (YAML)."),
    db_path: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed point."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per point, then the run, on stdout."),
) -> None:
    """Deploy, run the job and destroy at every point and repeat; record the timings.
    Exit 5 if another bench run is going (nothing is recorded), 1 if a point failed."""
    from astrostack.bench import runner
    from astrostack.bench.matrix import load_matrix

    loaded = load_matrix(matrix)
    note = err_console if as_json else console
    cluster = runner.LiveCluster(_runtime(note))
    summary = runner.run_bench(loaded, cluster, db_path or db.default_db_path(), fail_fast=fail_fast,
                               on_point=_point_printer(as_json))
    if as_json:
        print_json({"event": "run", **summary.as_dict()})
    else:
        console.print(f"run {summary.run_id} ({summary.matrix}): {summary.status}, {len(summary.rows)} point(s), "
                      f"{summary.wall_s:.1f} s, tool overhead {summary.overhead_pct:.2f} %", highlight=False)
    if summary.status != "ok":
        raise BenchFailed(summary.error or "the run failed", hint="see `astrostack bench report`")


def _runtime(note_console):
    from astrostack.lifecycle import Runtime

    return Runtime(note=lambda message: note_console.print(message, highlight=False))


def _point_printer(as_json: bool):
    def show(row) -> None:  # a db.PointRow
        if as_json:
            print_json({"event": "point", "hosts": row.hosts, "nodes": row.nodes, "repeat": row.repeat,
                        "status": row.status, "deploy_s": row.deploy_s, "create_s": row.create_s,
                        "compute_s": row.compute_s, "error": row.error or None, "evidence_dir": row.evidence_dir})
            return
        timings = f"deploy {_s(row.deploy_s)}  create {_s(row.create_s)}  compute {_s(row.compute_s)}"
        evidence = f" (evidence: {row.evidence_dir})" if row.evidence_dir else ""
        outcome = timings if row.status == "ok" else f"[red]failed[/red]: {escape(row.error)}{escape(evidence)}"
        console.print(f"{row.hosts} hosts x {row.nodes} nodes, repeat {row.repeat}: {outcome}", highlight=False)

    return show


def _s(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


@app.command("report")
def report_cmd(
    db_path: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    output: Format = typer.Option(Format.table, "--format", help="table, csv or json."),
    plots_dir: Optional[Path] = typer.Option(None, "--plots", help="Also write Fig. 5 and Fig. 6 as PNG here."),
    run_id: Optional[int] = typer.Option(None, "--run", help="Only this run (default: every run)."),
    matrix: Optional[str] = typer.Option(None, "--matrix", help="Only runs of this matrix name."),
) -> None:
    """Table 1's columns per (servers, nodes): median [min-max] over the repeats."""
    from astrostack.bench import report

    with db.open_db(db_path or db.default_db_path(create=False), create=False) as conn:
        rows = db.point_rows(conn, run_id=run_id, matrix=matrix)
    summaries = report.summarize(rows)
    if output is Format.json:
        print(report.as_json(summaries))
    elif output is Format.csv:
        print(report.as_csv(summaries), end="")
    else:
        console.print(report.as_table(summaries))
    if plots_dir is not None:
        from astrostack.bench import plots  # matplotlib: ~0.4 s to import, only when plotting

        for path in plots.write_plots(rows, plots_dir):
            err_console.print(f"wrote {path}", highlight=False)


@app.command("schedule")
def schedule_cmd(
    matrix: Path = typer.Argument(..., help="Bench matrix (YAML)."),
    cron: str = typer.Option(..., "--cron", help="5-field cron expression, e.g. '30 2 * * *'."),
    systemd: bool = typer.Option(False, "--systemd", help="A systemd .service + .timer instead of a cron.d entry."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be installed; change nothing."),
    db_path: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    target: Optional[Path] = typer.Option(
        None, "--path", help="cron: the file to write (default /etc/cron.d/astrostack-NAME); "
                             "systemd: the unit folder (default /etc/systemd/system)."),
) -> None:
    """Run `astrostack bench run MATRIX` on a schedule; overlapping runs never both run.
    The matrix is validated whole (job and every point) before anything is installed."""
    from astrostack.bench import schedule
    from astrostack.bench.matrix import load_matrix

    if str(matrix) == "-":
        raise InvalidInput("bench schedule needs a matrix file, not - (the scheduled runs read it later)")
    name = load_matrix(matrix).name
    database = db_path or db.default_db_path(create=not dry_run)
    if systemd:
        files = schedule.install_systemd(cron, matrix, database, name, unit_dir=target, dry_run=dry_run)
    else:
        files = schedule.install_cron(cron, matrix, database, name, crontab_path=target, dry_run=dry_run)
    for scheduled in files:
        if dry_run:
            console.print(f"# would write {scheduled.path}:\n{scheduled.content}", highlight=False, markup=False)
        else:
            console.print(f"wrote {scheduled.path}", highlight=False)
