"""Cluster lifecycle commands: up, status, list, down, scale, rollback, sweep."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from astrostack import lifecycle, state
from astrostack.cleanup import SweepResult
from astrostack.cli.common import console, err_console, print_json, spec_from_path
from astrostack.errors import EXIT_DEGRADED
from astrostack.progress import JsonLinesPrinter, ProgressPrinter


def register(root: typer.Typer) -> None:
    names = {"up": up, "status": status, "list": list_clusters, "down": down,
             "scale": scale, "rollback": rollback, "sweep": sweep_cmd}
    for name, command in names.items():
        root.command(name)(command)


def _runtime(as_json: bool, on_event=None) -> lifecycle.Runtime:
    note = (lambda m: err_console.print(m, highlight=False)) if as_json else (lambda m: console.print(m, highlight=False))
    return lifecycle.Runtime(on_event=on_event, note=note)


def up(
    spec: str = typer.Argument(..., help="Cluster spec (YAML)."),
    keep_on_failure: Optional[bool] = typer.Option(
        None, "--keep-on-failure/--rollback-on-failure",
        help="Keep a failed cluster for debugging (exit 4) or roll it back (exit 3); default: the spec's on_failure."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per phase event on stdout."),
) -> None:
    """Create the cluster and wait until every host and node is ready."""
    cluster = spec_from_path(spec)
    if as_json:
        record = lifecycle.up(cluster, keep_on_failure=keep_on_failure,
                              runtime=_runtime(True, JsonLinesPrinter(sys.stdout)))
        print_json({"event": "ready", "cluster": record.name, "stack_id": record.stack_id,
                    "phases": state.dump(record)["phases"]})
        return
    with ProgressPrinter(console) as progress:
        record = lifecycle.up(cluster, keep_on_failure=keep_on_failure, runtime=_runtime(False, progress))
    console.print(f"cluster {record.name} is ready: {record.hosts_target} hosts, {record.nodes_target} nodes")


def status(
    name: str = typer.Argument(..., help="Cluster name."),
    cloud: Optional[str] = typer.Option(None, "--cloud", help="Cloud to look in when astrostack has no record of NAME."),
    quick: bool = typer.Option(False, "--quick", help="The record and the stack only; no look at the hosts and nodes."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Stack status, hosts, nodes and phase timings of a cluster; exit 6 if it is degraded."""
    report = lifecycle.status(name, cloud_name=cloud, quick=quick, runtime=_runtime(as_json))
    live = report.get("live")
    if as_json:
        print_json(report)
    else:
        _print_status(report)
    if live is not None and not live["healthy"]:
        raise typer.Exit(EXIT_DEGRADED)


def _print_status(report: dict) -> None:
    recorded = "" if report["recorded"] else " (not in astrostack's records: found in the cloud)"
    console.print(f"cluster {report['name']} ({report['cloud']}, {report.get('mode', '?')}): "
                  f"{report.get('status', 'unrecorded')}{recorded}", highlight=False)
    if report.get("record_problem"):
        console.print(f"  record: {report['record_problem']}", highlight=False)
    console.print(f"  stack: {report['stack_status']}", highlight=False)
    if "hosts_target" in report:
        console.print(f"  recorded: hosts {report['hosts_ready']}/{report['hosts_target']}  "
                      f"nodes {report['nodes_ready']}/{report['nodes_target']}", highlight=False)
    live = report.get("live")
    if live:
        health = "healthy" if live["healthy"] else "DEGRADED"
        console.print(f"  now: {health}: {live['detail']}", highlight=False)
        for server, why in live.get("dead_servers", []):
            console.print(f"  server {server}: {why}", highlight=False)
    for phase, entry in report.get("phases", {}).items():
        console.print(f"  {phase:<6} {entry.get('outcome') or 'unfinished'} {entry.get('seconds') or ''}", highlight=False)
    if report.get("evidence_dir"):
        console.print(f"  evidence: {report['evidence_dir']}", highlight=False)


def list_clusters(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Clusters astrostack has records of, unreadable records, and clusters the clouds have that no record knows."""
    rows = lifecycle.list_clusters(runtime=_runtime(as_json))
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no clusters (create one: astrostack up SPEC)")
    for row in rows:
        if row["status"] == "unreadable":
            console.print(f"{row['name']:<24} {'?':<10} unreadable   {row['problem']}", highlight=False)
        elif not row["recorded"]:
            console.print(f"{row['name']:<24} {row['cloud']:<10} unrecorded   stack {row['stack_status']} "
                          f"(`astrostack status {row['name']} --cloud {row['cloud']}`)", highlight=False)
        else:
            console.print(f"{row['name']:<24} {row['cloud']:<10} {row['status']:<12} {row['hosts']} hosts "
                          f"{row['nodes']} nodes", highlight=False)


def down(
    name: str = typer.Argument(..., help="Cluster name."),
    cloud: Optional[str] = typer.Option(None, help="Cloud to look in when astrostack has no record of NAME."),
    force: bool = typer.Option(False, "--force", help="Retry; delete servers first, then the stack again."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (asked only on a terminal)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Delete a cluster and verify nothing is left, found by its record or, without one, in the cloud."""
    if not yes and sys.stdin.isatty() and not as_json:
        typer.confirm(f"Delete cluster {name} and everything it holds (its share included)?", abort=True)
    result = lifecycle.down(name, cloud_name=cloud, force=force, runtime=_runtime(as_json))
    _report_sweep(name, result, as_json, verb="deleted")


def scale(
    name: str = typer.Argument(..., help="Cluster name."),
    hosts: int = typer.Option(..., "--hosts", min=1, help="New number of hosts (manager included)."),
    nodes: Optional[int] = typer.Option(None, "--nodes", min=1, help="New number of nodes."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Resize a cluster: a deployment like `up` (hosts, then nodes and the smoke test); back to the old size on failure."""
    record = lifecycle.scale(name, hosts, nodes, runtime=_runtime(as_json))
    if as_json:
        print_json({"cluster": name, "hosts": record.hosts_target, "nodes": record.nodes_target})
    else:
        console.print(f"cluster {name} scaled to {record.hosts_target} hosts, {record.nodes_target} nodes")


def rollback(name: str = typer.Argument(..., help="Cluster name."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Return a cluster to its size before the last scale (cancelling an update still under way)."""
    record = lifecycle.rollback(name, runtime=_runtime(as_json))
    if as_json:
        print_json({"cluster": name, "hosts": record.hosts_target, "nodes": record.nodes_target})
    else:
        console.print(f"cluster {name} is back to {record.hosts_target} hosts, {record.nodes_target} nodes")


def sweep_cmd(
    cloud: str = typer.Option("local", "--cloud", help="`local` or a clouds.yaml cloud."),
    yes: bool = typer.Option(False, "--yes", help="Delete; without it, only list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Find (and with --yes delete) resources tagged with a cluster that has no stack."""
    result = lifecycle.sweep_cloud(cloud, dry_run=not yes)
    _report_sweep("(all)", result, as_json, verb="deleted" if yes else "would delete")


def _report_sweep(name: str, result: SweepResult, as_json: bool, verb: str) -> None:
    items = result.deleted or result.found
    if as_json:
        print_json({"cluster": name, "found": [i.__dict__ for i in result.found],
                    "deleted": [i.__dict__ for i in result.deleted]})
        return
    for item in items:
        console.print(f"  {verb} leftover {item.kind} {item.name} (cluster {item.cluster})", highlight=False)
    console.print(f"{name}: done, {len(result.deleted)} leftover(s) deleted" if result.deleted or verb == "deleted"
                  else f"{len(result.found)} leftover(s) found; run with --yes to delete")
