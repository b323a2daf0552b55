"""Bench results in SQLite (stdlib ``sqlite3``).

Two tables: ``runs`` (one per ``astrostack bench run``) and ``points`` (one per
deployment of a (hosts, nodes) point; ``repeat`` counts from 0). A
``schema_version`` table holds the layout's version; a database of version 1
(before the ``job`` column) is brought to 2 when opened, one of another version
is refused rather than misread. Times are UTC ISO-8601 strings, durations are
seconds, JSON columns hold JSON text. ``job`` holds what ran: the profile, the
program's parameters as run (for sagecal-mpi with -n, the threads chosen),
the threads and where they came from, the ranks.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from astrostack import paths
from astrostack.errors import InvalidInput, show_path

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    matrix TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
    error TEXT,
    evidence_dir TEXT,
    wall_s REAL,
    waiting_s REAL,
    overhead_s REAL
);
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    hosts INTEGER NOT NULL,
    nodes INTEGER NOT NULL,
    repeat INTEGER NOT NULL,
    cluster TEXT NOT NULL,
    cloud TEXT NOT NULL,
    flavors TEXT NOT NULL,
    image_digests TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    deploy_s REAL,
    create_s REAL,
    compute_s REAL,
    ratio REAL,
    phases TEXT NOT NULL,
    job_exit_code INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT NOT NULL,
    evidence_dir TEXT,
    job TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS points_by_size ON points (hosts, nodes);
"""


@dataclass
class PointRow:
    """One deployment of one point, as stored. ``ratio`` = deploy_s / compute_s."""

    run_id: int
    hosts: int
    nodes: int
    repeat: int
    cluster: str
    cloud: str
    flavors: dict[str, str]
    image_digests: dict[str, str]
    spec_hash: str
    deploy_s: Optional[float]
    create_s: Optional[float]
    compute_s: Optional[float]
    ratio: Optional[float]
    phases: dict[str, Any]
    job_exit_code: Optional[int]
    status: str
    error: str
    evidence_dir: Optional[str]
    job: dict[str, Any] = field(default_factory=dict)


JSON_COLUMNS = ("flavors", "image_digests", "phases", "job")
# Schema migrations: from version N, the statements that make it N + 1.
MIGRATIONS = {1: ("ALTER TABLE points ADD COLUMN job TEXT NOT NULL DEFAULT '{}'",)}
POINT_COLUMNS = tuple(field.name for field in fields(PointRow))


def default_db_path(create: bool = True) -> Path:
    """<ASTROSTACK_HOME>/bench/bench.sqlite; with create=False nothing is made on the way."""
    folder = paths.subdir("bench") if create else paths.home_path() / "bench"
    return folder / "bench.sqlite"


@contextlib.contextmanager
def open_db(path: str | Path, *, create: bool = True) -> Iterator[sqlite3.Connection]:
    """A connection with the schema in place; committed and closed on exit.

    With create=False (reading: `bench report`) a missing database is one line of
    :class:`InvalidInput`, never a new empty file."""
    path = Path(path)
    shown = show_path(path)
    if not create and not path.exists():
        raise InvalidInput(f"{shown}: no such bench database", hint="`astrostack bench run MATRIX --db "
                           f"{shown}` records one; see --db")
    if path.is_dir():
        raise InvalidInput(f"{shown}: is a directory, not a bench database")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path if create else f"file:{quote_uri(path)}?mode=rw", uri=not create)
    except (sqlite3.Error, OSError) as exc:
        raise InvalidInput(f"{shown}: cannot open the bench database ({exc})") from None
    conn.row_factory = sqlite3.Row
    try:
        _ensure_schema(conn, path)
        yield conn
        conn.commit()
    finally:
        conn.close()


def quote_uri(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path.absolute()))


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise InvalidInput(f"{show_path(path)}: not a bench database ({exc})") from None
    versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
    if not versions:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.commit()
        return
    while len(versions) == 1 and versions[0] in MIGRATIONS:
        for statement in MIGRATIONS[versions[0]]:
            conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (versions[0] + 1,))
        conn.commit()
        versions = [versions[0] + 1]
    if versions != [SCHEMA_VERSION]:
        raise InvalidInput(f"{show_path(path)}: bench database schema {versions} is not {SCHEMA_VERSION}; "
                           "use another --db")


# Writing ------------------------------------------------------------------------


def start_run(conn: sqlite3.Connection, matrix: str, started: str) -> int:
    cursor = conn.execute("INSERT INTO runs (matrix, started, status) VALUES (?, ?, 'running')", (matrix, started))
    conn.commit()
    return int(cursor.lastrowid)


def finish_run(conn: sqlite3.Connection, run_id: int, *, finished: str, status: str, error: Optional[str],
               evidence_dir: Optional[str], wall_s: float, waiting_s: float) -> None:
    conn.execute(
        "UPDATE runs SET finished = ?, status = ?, error = ?, evidence_dir = ?, wall_s = ?, waiting_s = ?,"
        " overhead_s = ? WHERE id = ?",
        (finished, status, error, evidence_dir, wall_s, waiting_s, wall_s - waiting_s, run_id),
    )
    conn.commit()


def add_point(conn: sqlite3.Connection, row: PointRow) -> None:
    values = asdict(row)
    for column in JSON_COLUMNS:
        values[column] = json.dumps(values[column], sort_keys=True, default=str)
    placeholders = ", ".join("?" for _ in POINT_COLUMNS)
    conn.execute(f"INSERT INTO points ({', '.join(POINT_COLUMNS)}) VALUES ({placeholders})",
                 [values[column] for column in POINT_COLUMNS])
    conn.commit()


# Reading ------------------------------------------------------------------------


def point_rows(conn: sqlite3.Connection, *, run_id: Optional[int] = None,
               matrix: Optional[str] = None) -> list[PointRow]:
    """Stored points, oldest first; optionally of one run or one matrix."""
    query = "SELECT points.* FROM points JOIN runs ON runs.id = points.run_id WHERE 1 = 1"
    params: list[Any] = []
    if run_id is not None:
        query += " AND points.run_id = ?"
        params.append(run_id)
    if matrix is not None:
        query += " AND runs.matrix = ?"
        params.append(matrix)
    rows = conn.execute(query + " ORDER BY points.id", params).fetchall()
    return [_point_from_row(row) for row in rows]


def _point_from_row(row: sqlite3.Row) -> PointRow:
    values = {column: row[column] for column in POINT_COLUMNS}
    for column in JSON_COLUMNS:
        values[column] = json.loads(values[column])
    return PointRow(**values)


def runs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute("SELECT * FROM runs ORDER BY id")]
