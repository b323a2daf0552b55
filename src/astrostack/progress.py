"""Show the monitor's :class:`~astrostack.monitor.PhaseEvent` stream to a person or a program.

:class:`ProgressPrinter` keeps one live line (Heat resources, hosts, nodes,
elapsed time per phase, the last event) and prints a permanent line when a
phase ends. :class:`JsonLinesPrinter` writes one JSON object per event for
``--json``. Both are ``on_event`` callbacks; the monitor itself has no UI code.
"""

from __future__ import annotations

import json
import time
from typing import IO, Callable, Optional

from rich.console import Console
from rich.live import Live
from rich.text import Text

from astrostack.monitor import PHASES, PhaseEvent

_FINAL_STYLE = {"done": ("✓", "green"), "failed": ("✗", "bold red"), "timeout": ("⏱", "bold red")}


class ProgressPrinter:
    """A live status line fed by monitor events; use as a context manager.

    ``with ProgressPrinter() as show: wait_until_ready(..., on_event=show)``
    """

    def __init__(self, console: Optional[Console] = None, clock: Callable[[], float] = time.monotonic):
        self.console = console or Console(stderr=True)
        self.clock = clock
        self.latest: Optional[PhaseEvent] = None
        self._seen_at = clock()
        self._phase_seconds: dict[str, float] = {}
        self._live = Live(self, console=self.console, refresh_per_second=4, transient=True)

    def __enter__(self) -> ProgressPrinter:
        self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._live.stop()

    def __call__(self, event: PhaseEvent) -> None:
        self.latest = event
        self._seen_at = self.clock()
        self._phase_seconds[event.phase] = event.phase_elapsed
        if event.kind in _FINAL_STYLE:
            self.console.print(self.final_line(event))
        self._live.refresh()

    def __rich__(self) -> Text:
        return self.status_line()

    def status_line(self) -> Text:
        """resources 12/40 · hosts 2/3 · nodes 0/12 · stack 41s hosts 12s · <last event>."""
        event = self.latest
        if event is None:
            return Text("waiting for the first poll…", style="dim")
        line = Text()
        line.append(f"resources {event.resources_done}/{event.resources_total}", style="cyan")
        line.append(f" · hosts {event.hosts_signalled}/{event.hosts_target}", style="cyan")
        line.append(f" · nodes {event.nodes_ready}/{event.nodes_target}", style="cyan")
        line.append(" · " + self._phase_times(), style="bold")
        if event.message:
            line.append(f" · {event.message}", style="dim")
        return line

    def final_line(self, event: PhaseEvent) -> Text:
        mark, style = _FINAL_STYLE[event.kind]
        return Text(f"{mark} {event.phase} {event.kind} in {event.phase_elapsed:.0f} s: {event.message}", style=style)

    def _phase_times(self) -> str:
        """Elapsed seconds of every phase seen; the running one keeps ticking between events."""
        running = self.latest.phase if self.latest and self.latest.kind not in _FINAL_STYLE else None
        parts = []
        for phase in PHASES:
            if phase not in self._phase_seconds:
                continue
            seconds = self._phase_seconds[phase]
            if phase == running:
                seconds += self.clock() - self._seen_at
            parts.append(f"{phase} {seconds:.0f}s")
        return " ".join(parts)


class JsonLinesPrinter:
    """Write each event as one JSON object on its own line (for ``--json``)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def __call__(self, event: PhaseEvent) -> None:
        self.stream.write(json.dumps(event.as_json(), sort_keys=True) + "\n")
        self.stream.flush()


__all__ = ["JsonLinesPrinter", "ProgressPrinter"]
