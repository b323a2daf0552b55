"""The paper's Fig. 5 and Fig. 6 as PNG files, from the stored points.

Fig. 5: deployment time by cluster size: nodes on x, one colour per hosts
value; every repeat is a point (overall deployment filled, cluster creation
hollow) and a line joins the medians, so the spread of the repeats stays
visible. Fig. 6: overall deployment against compute time, one point per
deployment, with the 5 % and 10 % ratio lines for reference.

Figures are built with matplotlib's object API on the Agg canvas: no pyplot
state, no display needed. Only ``ok`` points are plotted.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from astrostack.bench.db import PointRow
from astrostack.errors import InvalidInput

FIG5_FILE = "fig5_deployment_time.png"
FIG6_FILE = "fig6_deployment_vs_compute.png"
RATIO_GUIDES = (0.05, 0.10)
DPI = 120


def fig5(rows: Iterable[PointRow]) -> Figure:
    """Deployment time by cluster size (overall and creation), one series per hosts value."""
    ok = _ok(rows)
    figure, axes = _figure()
    colours = _colours(sorted({row.hosts for row in ok}))
    for hosts, colour in colours.items():
        series = [row for row in ok if row.hosts == hosts]
        _series(axes, series, "deploy_s", colour, filled=True, label=f"{hosts} servers: overall deployment")
        _series(axes, series, "create_s", colour, filled=False, label=f"{hosts} servers: cluster creation")
    _size_axis(axes, [row.nodes for row in ok])
    axes.set_xlabel("cluster nodes (MPI ranks)")
    axes.set_ylabel("time (s)")
    axes.set_title("Fig. 5: cluster deployment time (points: repeats; lines: medians)")
    axes.legend(fontsize="small")
    return figure


def fig6(rows: Iterable[PointRow]) -> Figure:
    """Overall deployment time against compute time, one point per deployment."""
    ok = [row for row in _ok(rows) if row.compute_s is not None and row.deploy_s is not None]
    figure, axes = _figure()
    sizes = sorted({(row.hosts, row.nodes) for row in ok})
    colours = _colours(sizes)
    for (hosts, nodes), colour in colours.items():
        series = [row for row in ok if (row.hosts, row.nodes) == (hosts, nodes)]
        axes.scatter([row.compute_s for row in series], [row.deploy_s for row in series], color=colour,
                     label=f"{hosts} servers, {nodes} nodes", zorder=3)
    longest = max(row.compute_s for row in ok)
    for ratio in RATIO_GUIDES:
        axes.plot([0, longest], [0, ratio * longest], linestyle=":", color="grey", linewidth=1)
        axes.annotate(f"{ratio:.0%}", (longest, ratio * longest), fontsize="small", color="grey")
    axes.set_xlabel("cluster compute time (s)")
    axes.set_ylabel("overall deployment time (s)")
    axes.set_title("Fig. 6: deployment time and compute time")
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.legend(fontsize="small")
    return figure


def write_plots(rows: Iterable[PointRow], folder: str | Path) -> list[Path]:
    """Fig. 5 and Fig. 6 as PNG files in ``folder``; their paths."""
    rows = list(rows)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, figure in ((FIG5_FILE, fig5(rows)), (FIG6_FILE, fig6(rows))):
        path = folder / filename
        figure.savefig(path, format="png", dpi=DPI)
        written.append(path)
    return written


def _ok(rows: Iterable[PointRow]) -> list[PointRow]:
    ok = [row for row in rows if row.status == "ok"]
    if not ok:
        raise InvalidInput("no successful bench points to plot (run `astrostack bench run MATRIX` first)")
    return ok


def _figure():
    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _colours(keys: list) -> dict:
    palette = [f"C{i}" for i in range(10)]
    return {key: palette[i % len(palette)] for i, key in enumerate(keys)}


def _series(axes, rows: list[PointRow], column: str, colour: str, *, filled: bool, label: str) -> None:
    points = [(row.nodes, getattr(row, column)) for row in rows if getattr(row, column) is not None]
    if not points:
        return
    marker = {"color": colour} if filled else {"facecolors": "none", "edgecolors": colour}
    axes.scatter([x for x, _ in points], [y for _, y in points], marker="o" if filled else "s",
                 label=label, zorder=3, **marker)
    medians = _medians(points)
    # The "_" marker shows a median even where a series has a single cluster size.
    axes.plot(list(medians), list(medians.values()), color=colour, linestyle="-" if filled else "--",
              marker="_", markersize=16)


def _medians(points: list[tuple[int, float]]) -> dict[int, float]:
    by_x: dict[int, list[float]] = {}
    for x, y in points:
        by_x.setdefault(x, []).append(y)
    return {x: statistics.median(by_x[x]) for x in sorted(by_x)}


def _size_axis(axes, nodes: list[int]) -> None:
    if max(nodes) >= 10 * min(nodes):
        axes.set_xscale("log")
    axes.set_xticks(sorted(set(nodes)), labels=[str(n) for n in sorted(set(nodes))])
    axes.set_ylim(bottom=0)
