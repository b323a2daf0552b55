"""`astrostack local ...`: the local cloud, a real OpenStack on this machine."""

from __future__ import annotations

from typing import Optional

import typer

from astrostack.cli.common import console, err_console, print_json
from astrostack.local import controlplane, preflight

app = typer.Typer(help="The local cloud: a real OpenStack (Keystone, Nova, Neutron, Cinder, Glance, Heat) "
                       "on this machine.", no_args_is_help=True)

SERVICE_OPTION = typer.Option(None, "--service", "-s", help="Only this service (repeatable), e.g. heat-api.")


def _say(message: str) -> None:
    console.print(message, highlight=False)


def _say_on_stderr(message: str) -> None:
    """Progress while stdout is reserved for JSON."""
    err_console.print(message, highlight=False)


@app.command("start")
def start(service: Optional[list[str]] = SERVICE_OPTION,
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Install (first time), configure and start the local cloud; a second start starts only what is down."""
    report = controlplane.start(service or None, say=_say_on_stderr if as_json else _say)
    if as_json:
        print_json({"started": report.started, "compute_driver": report.compute_driver,
                    "seconds": round(report.seconds, 1)})


@app.command("stop")
def stop(service: Optional[list[str]] = SERVICE_OPTION) -> None:
    """Stop the services `start` started (or only the named ones)."""
    stopped = controlplane.stop(service or None, say=_say)
    _say(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every service: pid, alive, API answering, memory, log."""
    rows = controlplane.status(say=_say_on_stderr if as_json else _say)
    if as_json:
        print_json([row.as_json() for row in rows])
        return
    for row in rows:
        answering = {None: "", True: "[green]answering[/green]", False: "[red]not answering[/red]"}[row.answering]
        alive = "[green]running[/green]" if row.alive else "[yellow]stopped[/yellow]"
        pid = row.pid if row.pid else "-"
        console.print(f"{row.name:<20} {alive:<24} pid {pid!s:<8} {row.rss_bytes / 2**20:6.0f} MiB  "
                      f"{answering:<30} {row.log}", highlight=False)


@app.command("preflight")
def preflight_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Kernel features a real VM has, whether this machine has them, and the substitute."""
    features = preflight.run_preflight()
    if as_json:
        print_json([f.__dict__ for f in features])
        return
    for f in features:
        mark = "[green]yes[/green]" if f.available else "[yellow]no[/yellow]"
        console.print(f"{f.feature:<22} {mark}  {'' if f.available else 'substitute: ' + f.substitute}", highlight=False)
