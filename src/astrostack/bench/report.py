"""Table 1 from the stored points: per (hosts, nodes), n and the median, min
and max of compute, overall deployment and creation time and their ratio.

Only ``ok`` points enter the numbers; ``failed`` counts the others. The ratio
is aggregated per deployment (the median of deploy_s / compute_s), not as a
ratio of medians, and shown in percent as in the paper. CSV and JSON round
to 4 decimals (0.1 ms; 0.0001 %), the table to 1 as the paper does.

Each line also says what was measured: the job's parameters as run (for
sagecal-mpi with the threads chosen) and the application image's digest, each
distinct value of the line's deployments (JSON and CSV: ``job_params`` and
``image_digests``; the table: a note per line under it).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from rich.markup import escape
from rich.table import Table

from astrostack.bench.db import PointRow

# (key, Table 1 heading, scale applied to the stored value)
METRICS: tuple[tuple[str, str, float], ...] = (
    ("compute_s", "Cluster compute time (s)", 1.0),
    ("deploy_s", "Overall deployment time (s)", 1.0),
    ("create_s", "Cluster creation time (s)", 1.0),
    ("ratio_pct", "Deployment/compute time ratio (%)", 100.0),
)
STATS = ("median", "min", "max")
DECIMALS = 4
STORED_COLUMN = {"compute_s": "compute_s", "deploy_s": "deploy_s", "create_s": "create_s", "ratio_pct": "ratio"}


@dataclass
class Spread:
    """Median, min and max of one column over the repeats of one point."""

    median: Optional[float]
    min: Optional[float]
    max: Optional[float]

    @classmethod
    def of(cls, values: Iterable[Optional[float]]) -> Spread:
        present = [value for value in values if value is not None]
        if not present:
            return cls(None, None, None)
        return cls(statistics.median(present), min(present), max(present))


@dataclass
class PointSummary:
    """One line of Table 1."""

    hosts: int
    nodes: int
    n: int
    failed: int
    metrics: dict[str, Spread] = field(default_factory=dict)
    job_params: list[str] = field(default_factory=list)  # distinct parameter lines of the deployments
    image_digests: list[str] = field(default_factory=list)  # distinct "image@digest" of the deployments

    def flat(self) -> dict[str, Any]:
        """``hosts, nodes, n, failed, compute_s_median, compute_s_min, ..., job_params, image_digests`` (CSV, JSON)."""
        row: dict[str, Any] = {"hosts": self.hosts, "nodes": self.nodes, "n": self.n, "failed": self.failed}
        for key, _, _ in METRICS:
            for stat in STATS:
                value = getattr(self.metrics[key], stat)
                row[f"{key}_{stat}"] = None if value is None else round(value, DECIMALS)
        row["job_params"] = "; ".join(self.job_params)
        row["image_digests"] = "; ".join(self.image_digests)
        return row


def summarize(rows: Iterable[PointRow]) -> list[PointSummary]:
    """Group points by (hosts, nodes), smallest cluster first."""
    groups: dict[tuple[int, int], list[PointRow]] = {}
    for row in rows:
        groups.setdefault((row.hosts, row.nodes), []).append(row)
    return [_summary(hosts, nodes, groups[(hosts, nodes)]) for hosts, nodes in sorted(groups)]


def _summary(hosts: int, nodes: int, rows: list[PointRow]) -> PointSummary:
    ok = [row for row in rows if row.status == "ok"]
    metrics = {key: Spread.of(_scaled(getattr(row, STORED_COLUMN[key]), scale) for row in ok)
               for key, _, scale in METRICS}
    return PointSummary(hosts, nodes, n=len(ok), failed=len(rows) - len(ok), metrics=metrics,
                        job_params=_distinct(_params(row) for row in rows),
                        image_digests=_distinct(f"{image}@{digest}" for row in rows
                                                for image, digest in sorted(row.image_digests.items())))


def _params(row: PointRow) -> str:
    job = row.job or {}
    return " ".join([job.get("profile", "?"), *job.get("params", [])]) if job else ""


def _distinct(values: Iterable[str]) -> list[str]:
    return [value for value in dict.fromkeys(values) if value]


def _scaled(value: Optional[float], scale: float) -> Optional[float]:
    return None if value is None else value * scale


# Rendering ------------------------------------------------------------------------


def as_json(summaries: list[PointSummary]) -> str:
    return json.dumps([summary.flat() for summary in summaries], indent=2)


def as_csv(summaries: list[PointSummary]) -> str:
    buffer = io.StringIO()
    header = (["hosts", "nodes", "n", "failed"] + [f"{key}_{stat}" for key, _, _ in METRICS for stat in STATS]
              + ["job_params", "image_digests"])
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for summary in summaries:
        writer.writerow({key: "" if value is None else value for key, value in summary.flat().items()})
    return buffer.getvalue()


def as_table(summaries: list[PointSummary]) -> Table:
    """Table 1's columns; each cell the median, and under it the min-max of the repeats."""
    table = Table(title="Table 1: deployment and compute time (median, and min-max over n repeats)")
    for heading in ("Servers", "Cluster nodes", "n", "failed"):
        table.add_column(heading, justify="right", overflow="fold")
    for _, heading, _ in METRICS:
        table.add_column(heading, justify="right", min_width=11, overflow="fold")
    for summary in summaries:
        cells = [str(summary.hosts), str(summary.nodes), str(summary.n), str(summary.failed)]
        table.add_row(*cells, *(_cell(summary.metrics[key]) for key, _, _ in METRICS))
    notes = [f"{summary.hosts}x{summary.nodes}: {' | '.join(summary.job_params) or '-'}; "
             f"image {' | '.join(summary.image_digests) or '-'}" for summary in summaries]
    table.caption = escape("\n".join(notes))
    table.caption_justify = "left"
    return table


def _cell(spread: Spread) -> str:
    if spread.median is None:
        return "-"
    return f"{spread.median:.1f}\n[dim]{spread.min:.1f}-{spread.max:.1f}[/dim]"
