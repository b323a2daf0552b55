"""`astrostack local ...`: the local cloud on this machine."""

from __future__ import annotations

import typer

from astrostack.cli.common import console, print_json
from astrostack.local import cloud as local_cloud
from astrostack.local import engine, preflight

app = typer.Typer(help="The local cloud: a real Heat engine whose servers are containers on this machine.",
                  no_args_is_help=True)


@app.command("start")
def start(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Start the Docker engine and the local Heat engine (a second start is harmless)."""
    current = local_cloud.ensure_running(note=lambda m: console.print(m, highlight=False))
    _show(current, as_json)


@app.command("stop")
def stop() -> None:
    """Stop the local Heat engine (clusters' container-VMs keep running)."""
    engine.stop()
    console.print("local Heat engine stopped")


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Is the local Heat engine running, where, and where it logs."""
    _show(engine.status(), as_json)


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


def _show(current: engine.EngineStatus, as_json: bool) -> None:
    data = {
        "running": current.running,
        "answering": current.answering,
        "url": current.url,
        "pid": current.pid,
        "log": str(current.log_path),
        "config": str(current.config_path),
        "version": current.version,
    }
    if as_json:
        print_json(data)
        return
    state_word = "running" if current.running and current.answering else "stopped"
    console.print(f"local Heat engine: {state_word} at {current.url} (pid {current.pid}, log {current.log_path})",
                  highlight=False)
