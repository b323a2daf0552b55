"""`astrostack bench`: matrix, runner, database, report, plots, lock, schedule.

The cloud is replaced by an injected collaborator (:class:`FakeCluster`) that
answers deploy / run_job / destroy on a simulated clock: what the runner does
with its answers is real (SQLite, matplotlib, fcntl, real processes).
"""

from __future__ import annotations

import configparser
import csv
import io
import json
import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from astrostack import state
from astrostack.bench import db, plots, report, runner, schedule
from astrostack.bench.matrix import BenchMatrix, load_matrix, matrix_from_dict
from astrostack.errors import AstrostackError, DeployFailed, InvalidInput
from astrostack.job import DEFAULT_SAGECAL_PARAMS
from astrostack.state import ClusterRecord, PhaseRecord

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Register the sub-app the way cli/main.py does (once it has the line).
CLI = textwrap.dedent("""
    import sys
    from astrostack.cli import bench_cmds, main as cli_main
    if not any(group.name == "bench" for group in cli_main.app.registered_groups):
        cli_main.app.add_typer(bench_cmds.app, name="bench")
    sys.exit(cli_main.main(sys.argv[1:]))
""")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# The collaborator --------------------------------------------------------------------


class SimClock:
    """Monotonic seconds and UTC wall time that move only when told."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class FakeJob:
    exit_code: int
    started: datetime
    finished: datetime
    job_dir: str


class FakeCluster:
    """Deploys in ``deploy_s`` (of which the nodes phase is ``nodes_s``), computes in ``compute_s``;
    both grow with the cluster and a little with each repeat, so repeats have a spread."""

    def __init__(self, clock: SimClock, tmp: Path, *, fail_deploy: frozenset = frozenset(),
                 job_exit: dict | None = None):
        self.clock, self.tmp = clock, tmp
        self.fail_deploy = fail_deploy  # {(cluster name, deploy number)}
        self.job_exit = job_exit or {}
        self.calls: list[tuple[str, str]] = []
        self.deploys: dict[str, int] = {}

    def timings(self, spec) -> tuple[float, float, float]:
        attempt = self.deploys[spec.name]
        deploy_s = 10.0 + spec.hosts * 2 + spec.nodes / 10 + 1.5 * attempt
        return deploy_s, 3.0 + spec.nodes / 20 + 0.5 * attempt, 600.0 - 10 * spec.hosts + 4 * attempt

    def deploy(self, spec) -> ClusterRecord:
        self.calls.append(("deploy", spec.name))
        self.deploys[spec.name] = self.deploys.get(spec.name, -1) + 1
        if (spec.name, self.deploys[spec.name]) in self.fail_deploy:
            self.clock.advance(7.0)
            evidence = self.tmp / "evidence" / f"{spec.name}-{self.deploys[spec.name]}"
            evidence.mkdir(parents=True)
            raise DeployFailed("hosts: 1/3 hosts signalled within 300 s; rolled back", phase="hosts",
                               evidence=str(evidence), rolled_back=True)
        deploy_s, nodes_s, _ = self.timings(spec)
        started = self.clock.now()
        self.clock.advance(deploy_s)
        record = ClusterRecord.from_spec(spec, stack_name=spec.name, status="ready")
        record.phases = {
            "stack": PhaseRecord(started=started + timedelta(seconds=1), finished=started + timedelta(seconds=4),
                                 outcome="done"),
            "hosts": PhaseRecord(started=started + timedelta(seconds=4),
                                 finished=self.clock.now() - timedelta(seconds=nodes_s), outcome="done"),
            "nodes": PhaseRecord(started=self.clock.now() - timedelta(seconds=nodes_s), finished=self.clock.now(),
                                 outcome="done"),
        }
        record.image_digests = {"astrostack/mpi-base:latest": "sha256:" + "b" * 64}
        return record

    def run_job(self, record: ClusterRecord, job: dict[str, Any]) -> FakeJob:
        self.calls.append(("job", record.name))
        spec_like = type("S", (), {"name": record.name, "hosts": record.hosts_target, "nodes": record.nodes_target})
        _, _, compute_s = self.timings(spec_like)
        self.clock.advance(0.5)  # submission
        started = self.clock.now()
        self.clock.advance(compute_s)
        job_dir = self.tmp / "jobs" / f"{record.name}-{self.deploys[record.name]}"
        job_dir.mkdir(parents=True)
        exit_code = self.job_exit.get((record.name, self.deploys[record.name]), 0)
        return FakeJob(exit_code, started, self.clock.now(), str(job_dir))

    def destroy(self, spec) -> None:
        self.calls.append(("destroy", spec.name))
        self.clock.advance(2.0)


def small_matrix(**changes: Any) -> BenchMatrix:
    data = {
        "name": "small",
        "spec": {"name": "ignored", "cloud": "local", "ssh": {"allowed_cidr": "172.24.4.1/32"},
                 "servers": {"manager": {"flavor": "local"},
                                                                   "worker": {"flavor": "local"},
                                                                   "nfs": {"flavor": "local-small"}}},
        "job": {"profile": "mpi", "command": ["/usr/local/bin/mpi_smoke"]},
        "points": [{"hosts": 3, "nodes": 12}, {"hosts": 3, "nodes": 24}, {"hosts": 4, "nodes": 24}],
        "repeats": 3,
    }
    data.update(changes)
    return matrix_from_dict(data)


def run_small(tmp_path: Path, matrix: BenchMatrix | None = None, **cluster_options: Any):
    clock = SimClock()
    cluster = FakeCluster(clock, tmp_path, **cluster_options)
    summary = runner.run_bench(matrix or small_matrix(), cluster, tmp_path / "bench.sqlite",
                               clock=clock.monotonic, now=clock.now)
    return summary, cluster


def raw_points(path: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM points ORDER BY id").fetchall()
    finally:
        conn.close()


def raw_runs(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("SELECT * FROM runs ORDER BY id")]
    finally:
        conn.close()


# The runner and the database ----------------------------------------------------------


def test_a_small_matrix_records_every_column_of_every_point(tmp_path):
    summary, cluster = run_small(tmp_path)

    rows = raw_points(tmp_path / "bench.sqlite")
    assert summary.status == "ok" and len(rows) == 3 * 3
    for row in rows:
        values = dict(row)
        empty = [key for key, value in values.items() if value is None or (value == "" and key != "error")]
        assert empty == [], f"point {row['hosts']}x{row['nodes']} repeat {row['repeat']}: empty {empty}"
    assert [(r["hosts"], r["nodes"], r["repeat"]) for r in rows] == [
        (h, n, repeat) for repeat in range(3) for h, n in ((3, 12), (3, 24), (4, 24))]  # repeat-major


def test_each_column_holds_what_its_name_says(tmp_path):
    summary, cluster = run_small(tmp_path)

    row = raw_points(tmp_path / "bench.sqlite")[4]  # 3x24, second deploy
    spec = small_matrix().point_spec(small_matrix().points[1])
    cluster.deploys = {spec.name: 1}
    deploy_s, nodes_s, compute_s = cluster.timings(spec)
    assert (row["cluster"], row["cloud"], row["spec_hash"]) == ("small-3x24", "local", spec.spec_hash())
    assert json.loads(row["flavors"]) == {"manager": "local", "worker": "local", "nfs": "local-small"}
    assert json.loads(row["image_digests"]) == {"astrostack/mpi-base:latest": "sha256:" + "b" * 64}
    assert row["deploy_s"] == pytest.approx(deploy_s)
    assert row["create_s"] == pytest.approx(nodes_s)
    assert row["compute_s"] == pytest.approx(compute_s)
    assert row["ratio"] == pytest.approx(deploy_s / compute_s)
    assert (row["job_exit_code"], row["status"], row["error"]) == (0, "ok", "")
    phases = json.loads(row["phases"])
    assert set(phases) == {"stack", "hosts", "nodes", "bench"}
    assert set(phases["bench"]) == {"deploy", "job", "destroy"}
    assert phases["bench"]["destroy"]["seconds"] == pytest.approx(2.0)
    assert all(phases[p]["started"] and phases[p]["finished"] for p in ("stack", "hosts", "nodes"))


def test_the_run_records_its_own_overhead_as_wall_time_minus_the_waits(tmp_path):
    summary, _ = run_small(tmp_path)

    (run,) = raw_runs(tmp_path / "bench.sqlite")
    rows = raw_points(tmp_path / "bench.sqlite")
    waited = sum(sum(step["seconds"] for step in json.loads(r["phases"])["bench"].values()) for r in rows)
    assert run["status"] == "ok" and run["finished"] and run["matrix"] == "small"
    assert run["waiting_s"] == pytest.approx(waited)
    assert run["overhead_s"] == pytest.approx(run["wall_s"] - run["waiting_s"])
    # The simulated clock moves only inside the collaborator: the tool's own time is zero here.
    assert summary.overhead_s == pytest.approx(0.0) and run["wall_s"] == pytest.approx(waited)


def test_a_failed_deploy_is_recorded_with_its_error_and_evidence_and_rolled_back(tmp_path):
    summary, cluster = run_small(tmp_path, fail_deploy=frozenset({("small-3x24", 0)}))

    rows = raw_points(tmp_path / "bench.sqlite")
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 9 and len(failed) == 1  # the run went on
    (row,) = failed
    assert (row["hosts"], row["nodes"], row["repeat"]) == (3, 24, 0)
    assert "1/3 hosts signalled" in row["error"]
    assert row["evidence_dir"] == str(tmp_path / "evidence" / "small-3x24-0")
    assert row["deploy_s"] is None and row["compute_s"] is None and row["ratio"] is None
    deploy_at = cluster.calls.index(("deploy", "small-3x24"))
    assert cluster.calls[deploy_at + 1] == ("destroy", "small-3x24")  # no job; destroyed at once
    (run,) = raw_runs(tmp_path / "bench.sqlite")
    assert run["status"] == "failed" and run["evidence_dir"] == row["evidence_dir"]
    assert "1 of 9 point(s) failed" in run["error"]
    assert summary.status == "failed"


def test_fail_fast_stops_at_the_first_failed_point(tmp_path):
    clock = SimClock()
    cluster = FakeCluster(clock, tmp_path, fail_deploy=frozenset({("small-3x24", 0)}))

    summary = runner.run_bench(small_matrix(), cluster, tmp_path / "bench.sqlite", fail_fast=True,
                               clock=clock.monotonic, now=clock.now)

    assert [(r.nodes, r.status) for r in summary.rows] == [(12, "ok"), (24, "failed")]
    assert len(raw_points(tmp_path / "bench.sqlite")) == 2
    assert cluster.calls[-1] == ("destroy", "small-3x24")


def test_a_job_that_exits_non_zero_fails_its_point_with_the_job_dir_as_evidence(tmp_path):
    summary, cluster = run_small(tmp_path, job_exit={("small-4x24", 2): 3})

    (row,) = [r for r in raw_points(tmp_path / "bench.sqlite") if r["status"] == "failed"]
    assert (row["hosts"], row["nodes"], row["repeat"], row["job_exit_code"]) == (4, 24, 2, 3)
    assert row["error"] == "job exited with 3"
    assert row["evidence_dir"] == str(tmp_path / "jobs" / "small-4x24-2")
    assert row["compute_s"] is not None  # measured all the same
    assert cluster.calls[-1] == ("destroy", "small-4x24")


def test_a_database_of_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "bench.sqlite"
    with db.open_db(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()

    with pytest.raises(InvalidInput, match="schema"), db.open_db(path):
        pass


V1_POINTS = """CREATE TABLE points (id INTEGER PRIMARY KEY, run_id INTEGER, hosts INTEGER, nodes INTEGER,
    repeat INTEGER, cluster TEXT, cloud TEXT, flavors TEXT, image_digests TEXT, spec_hash TEXT, phases TEXT,
    deploy_s REAL, creation_s REAL, compute_s REAL, ratio REAL, job_exit_code INTEGER, status TEXT,
    error TEXT, evidence_dir TEXT)"""


def test_a_version_1_database_gains_the_job_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "bench.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL); "
                       f"INSERT INTO schema_version VALUES (1); {V1_POINTS};"
                       "INSERT INTO points (id, hosts, nodes, status, error) VALUES (1, 3, 12, 'ok', '');")
    conn.commit()
    conn.close()

    with db.open_db(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(db.SCHEMA_VERSION,)] == [(2,)]
    assert conn.execute("SELECT hosts, nodes, job FROM points").fetchall() == [(3, 12, "{}")]
    conn.close()


def test_each_point_records_what_ran_and_the_report_shows_it_with_the_image_digest(tmp_path):
    @dataclass
    class SagecalOutcome(FakeJob):
        params: tuple = ("-t", "5", "-n", "2")
        threads: int = 2
        threads_source: str = "2 vCPU(s) of flavor m1.small / 1 ranks on the busiest host"
        ranks: int = 4

    class SagecalCluster(FakeCluster):
        def run_job(self, record, job):
            done = super().run_job(record, job)
            return SagecalOutcome(done.exit_code, done.started, done.finished, done.job_dir)

    clock = SimClock()
    job = {"profile": "sagecal-mpi", "ms": "data/*.MS", "sky_model": "s", "cluster_file": "c", "params": ["-t", "5"]}
    matrix = small_matrix(points=[{"hosts": 3, "nodes": 12}], repeats=1, job=job)
    runner.run_bench(matrix, SagecalCluster(clock, tmp_path), tmp_path / "bench.sqlite",
                     clock=clock.monotonic, now=clock.now)
    [row] = raw_points(tmp_path / "bench.sqlite")
    assert json.loads(row["job"]) == {"profile": "sagecal-mpi", "params": ["-t", "5", "-n", "2"], "threads": 2,
                                      "threads_source": "2 vCPU(s) of flavor m1.small / 1 ranks on the busiest host",
                                      "ranks": 4}
    [line] = json.loads(report.as_json(report.summarize(stored(tmp_path))))
    assert line["job_params"] == "sagecal-mpi -t 5 -n 2"
    assert line["image_digests"] == "astrostack/mpi-base:latest@sha256:" + "b" * 64
    shown = io.StringIO()
    Console(file=shown, width=200).print(report.as_table(report.summarize(stored(tmp_path))))
    assert "3x12: sagecal-mpi -t 5 -n 2; image astrostack/mpi-base:latest@sha256:bbbb" in shown.getvalue()


def test_a_job_that_never_ran_is_recorded_as_the_matrix_asked():
    asked = {"profile": "sagecal-mpi", "ms": "*.MS", "sky_model": "s", "cluster_file": "c", "params": ["-t", "5"]}
    assert runner.job_facts(asked, None) == {"profile": "sagecal-mpi", "params": ["-t", "5"]}
    defaults = {key: value for key, value in asked.items() if key != "params"}
    assert runner.job_facts(defaults, None)["params"] == DEFAULT_SAGECAL_PARAMS
    assert runner.job_facts({"profile": "mpi", "command": ["/x", "1"]}, None) == {"profile": "mpi",
                                                                                  "params": ["/x", "1"]}


def test_the_live_cluster_never_destroys_a_cluster_it_did_not_deploy():
    spec = small_matrix().point_spec(small_matrix().points[0])
    state.save(ClusterRecord.from_spec(spec, stack_name=spec.name, status="ready"))
    live = runner.LiveCluster()

    with pytest.raises(AstrostackError):
        live.deploy(spec)  # refused: the cluster exists (or the job runner is missing)
    live.destroy(spec)

    assert state.load(spec.name).status == "ready"


# The report ------------------------------------------------------------------------------


def stored(tmp_path: Path) -> list[db.PointRow]:
    with db.open_db(tmp_path / "bench.sqlite") as conn:
        return db.point_rows(conn)


def expected_aggregates(tmp_path: Path) -> dict[tuple[int, int], dict[str, float]]:
    """Median, min and max straight from SQL rows, independent of report.py."""
    result: dict[tuple[int, int], dict[str, float]] = {}
    rows = [r for r in raw_points(tmp_path / "bench.sqlite") if r["status"] == "ok"]
    for size in sorted({(r["hosts"], r["nodes"]) for r in rows}):
        group = [r for r in rows if (r["hosts"], r["nodes"]) == size]
        numbers = {"n": len(group)}
        for key, column, scale in (("compute_s", "compute_s", 1), ("deploy_s", "deploy_s", 1),
                                   ("create_s", "create_s", 1), ("ratio_pct", "ratio", 100)):
            values = [r[column] * scale for r in group]
            numbers.update({f"{key}_median": statistics.median(values), f"{key}_min": min(values),
                            f"{key}_max": max(values)})
        result[size] = numbers
    return result


def test_the_report_numbers_are_the_rows_aggregates_in_json_and_csv(tmp_path):
    run_small(tmp_path, fail_deploy=frozenset({("small-3x12", 1)}))
    expected = expected_aggregates(tmp_path)
    summaries = report.summarize(stored(tmp_path))

    from_json = {(r["hosts"], r["nodes"]): r for r in json.loads(report.as_json(summaries))}
    from_csv = {(int(r["hosts"]), int(r["nodes"])): r for r in csv.DictReader(io.StringIO(report.as_csv(summaries)))}

    assert set(from_json) == set(from_csv) == set(expected) == {(3, 12), (3, 24), (4, 24)}
    for size, numbers in expected.items():
        for key, value in numbers.items():
            assert from_json[size][key] == pytest.approx(value, abs=1e-4), (size, key)  # 4 decimals
            assert float(from_csv[size][key]) == pytest.approx(value, abs=1e-4), (size, key)
    assert from_json[(3, 12)]["n"] == 2 and from_json[(3, 12)]["failed"] == 1
    assert expected[(3, 24)]["deploy_s_min"] < expected[(3, 24)]["deploy_s_max"]  # a real spread


def test_the_report_table_has_table_1_columns_and_a_line_per_point(tmp_path):
    run_small(tmp_path)
    table = report.as_table(report.summarize(stored(tmp_path)))

    headings = [str(column.header) for column in table.columns]
    assert headings == ["Servers", "Cluster nodes", "n", "failed", "Cluster compute time (s)",
                        "Overall deployment time (s)", "Cluster creation time (s)",
                        "Deployment/compute time ratio (%)"]
    assert table.row_count == 3
    Console(file=io.StringIO(), width=200).print(table)  # renders


# The plots -----------------------------------------------------------------------------


def plotted_points(figure) -> set[tuple[float, float]]:
    points = set()
    for axes in figure.axes:
        for collection in axes.collections:
            points |= {(round(float(x), 6), round(float(y), 6)) for x, y in collection.get_offsets()}
    return points


def test_fig5_shows_every_deployment_of_every_point(tmp_path):
    run_small(tmp_path)
    rows = stored(tmp_path)

    shown = plotted_points(plots.fig5(rows))

    for row in rows:
        assert (row.nodes, round(row.deploy_s, 6)) in shown
        assert (row.nodes, round(row.create_s, 6)) in shown
    lines = [line for axes in plots.fig5(rows).axes for line in axes.get_lines()]
    assert len(lines) == 2 * 2  # a median line of overall and of creation per hosts value


def test_fig6_shows_deployment_against_compute_time_of_every_deployment(tmp_path):
    run_small(tmp_path)
    rows = stored(tmp_path)

    shown = plotted_points(plots.fig6(rows))

    assert {(round(r.compute_s, 6), round(r.deploy_s, 6)) for r in rows} <= shown


def test_plots_are_written_as_png_files(tmp_path):
    run_small(tmp_path)

    written = plots.write_plots(stored(tmp_path), tmp_path / "plots")

    assert [p.name for p in written] == [plots.FIG5_FILE, plots.FIG6_FILE]
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert path.stat().st_size > 20_000


def test_report_cli_prints_json_and_writes_plots(tmp_path, capsys):
    run_small(tmp_path)

    code = bench_main(["bench", "report", "--db", str(tmp_path / "bench.sqlite"), "--format", "json",
                       "--plots", str(tmp_path / "plots")])

    out = capsys.readouterr().out
    assert code == 0
    assert [(r["hosts"], r["nodes"], r["n"]) for r in json.loads(out)] == [(3, 12, 3), (3, 24, 3), (4, 24, 3)]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted([plots.FIG5_FILE, plots.FIG6_FILE])


# The lock: two real processes ------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from astrostack.bench import runner
    from astrostack.bench.matrix import load_matrix
    from astrostack.state import ClusterRecord

    holding, release, matrix, database = map(Path, sys.argv[1:5])

    class Slow:
        def deploy(self, spec):
            holding.write_text("deploying")
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return ClusterRecord.from_spec(spec, stack_name=spec.name)
        def run_job(self, record, job):
            raise SystemExit("the first run does not get this far in the test")
        def destroy(self, spec):
            pass

    class Job:
        exit_code, started, finished, job_dir = 0, 0.0, 1.0, "/tmp"

    Slow.run_job = lambda self, record, job: Job()
    summary = runner.run_bench(load_matrix(matrix), Slow(), database)
    print(summary.run_id, summary.status)
""")


def wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.05)


def test_two_overlapping_bench_runs_do_not_both_run(tmp_path, home):
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump({
        "name": "locked", "spec": str(EXAMPLES / "local.yaml"), "job": {"profile": "mpi", "command": ["true"]},
        "points": [{"hosts": 3, "nodes": 12}]}))
    database = tmp_path / "bench.sqlite"
    environment = {**os.environ, "ASTROSTACK_HOME": str(home)}
    holding, release = tmp_path / "holding", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, holding, release, matrix, database],
                             env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(holding)
        second = subprocess.run([sys.executable, "-c", CLI, "bench", "run", str(matrix), "--db", str(database)],
                                env=environment, capture_output=True, text=True, timeout=60)
    finally:
        release.write_text("go")
        out, err = first.communicate(timeout=60)

    assert second.returncode == runner.EXIT_BUSY == 5, second.stderr
    (line,) = [line for line in second.stderr.splitlines() if line.strip()]
    assert line.startswith("error: another bench run (pid ") and f"(pid {first.pid})" in line
    assert first.returncode == 0, err
    assert out.split() == ["1", "ok"]
    runs = raw_runs(database)
    assert [(r["id"], r["status"]) for r in runs] == [(1, "ok")]  # the second recorded nothing
    assert len(raw_points(database)) == 1


def test_the_lock_is_free_again_after_a_run(tmp_path):
    run_small(tmp_path)

    with runner.run_lock(runner.default_lock_file()):
        pass


# The matrix --------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    ({"points": []}, "points"),
    ({"points": [{"hosts": 0, "nodes": 4}]}, "points.0.hosts"),
    ({"points": [{"hosts": 3, "nodes": 12}, {"hosts": 3, "nodes": 12}]}, "points"),
    ({"repeats": 0}, "repeats"),
    ({"name": "Table 1"}, "name"),
    ({"job": {}}, "job"),
    ({"colour": "blue"}, "colour"),
    ({"points": [{"hosts": 4, "nodes": 2}]}, "nodes"),  # the point's spec: fewer nodes than hosts
    ({"spec_overrides": {"overlay": {"subnet": "10.0.9.0/30"}}}, "overlay.subnet"),
])
def test_a_bad_matrix_is_one_line_of_invalid_input_naming_the_field(change, field):
    with pytest.raises(InvalidInput) as caught:
        small_matrix(**change)

    message = str(caught.value)
    assert "\n" not in message
    assert f"{field}:" in message, message


def test_a_missing_base_spec_file_is_invalid_input(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: m\nspec: nowhere.yaml\njob: {profile: mpi}\npoints: [{hosts: 1, nodes: 1}]\n")

    with pytest.raises(InvalidInput, match=r"nowhere\.yaml: no such spec file"):
        load_matrix(matrix)


def test_a_bad_matrix_on_the_command_line_exits_2_with_one_line(tmp_path, capsys):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: m\nspec: {name: x}\njob: {profile: mpi}\npoints: [{hosts: two, nodes: 4}]\n")

    code = bench_main(["bench", "run", str(matrix), "--db", str(tmp_path / "b.sqlite")])

    err = capsys.readouterr().err
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error:") and "points.0.hosts:" in line
    assert not (tmp_path / "b.sqlite").exists()


def test_the_example_matrices_load_with_the_papers_points():
    local = load_matrix(EXAMPLES / "bench-local.yaml")
    table1 = load_matrix(EXAMPLES / "bench-table1.yaml")

    assert [(p.hosts, p.nodes) for p in local.points] == [(3, 4), (3, 7)] and local.repeats == 2
    assert local.point_spec(local.points[1]).cloud == "local"
    assert local.point_spec(local.points[0]).application.image == "astrostack/sagecal:latest"
    assert local.job["profile"] == "sagecal-mpi"
    assert local.job["upload"]["local_dir"] == str(Path("~/sagecal-bench-data").expanduser())
    assert [(p.hosts, p.nodes) for p in table1.points] == [(4, 32), (8, 64), (12, 96), (12, 500), (12, 1000)]
    assert table1.job["params"][:2] == ["-A", "20"] and table1.job["sky_model"] == "3c196.sky.txt"
    assert "-n" not in table1.job["params"] and table1.job["params"][6:8] == ["-t", "10"]
    assert table1.point_spec(table1.points[-1]).nodes == 1000


# The schedule ------------------------------------------------------------------------------


def test_the_cron_entry_runs_bench_run_under_flock(tmp_path, home):
    target = tmp_path / "cron.d" / "astrostack-nightly"
    matrix, database = EXAMPLES / "bench-local.yaml", tmp_path / "bench.sqlite"

    (written,) = schedule.install_cron("30 2 * * 1-5", matrix, database, "nightly", crontab_path=target)

    assert written.path == target and oct(target.stat().st_mode & 0o777) == "0o644"
    lines = [line for line in target.read_text().splitlines() if line and not line.startswith("#")]
    assert f"ASTROSTACK_HOME={home}" in lines
    fields = lines[-1].split(None, 6)
    assert fields[:6] == ["30", "2", "*", "*", "1-5", "root"]
    command = shlex.split(fields[6])
    assert Path(command[0]).name == "flock" and command[1] == "-n"
    assert command[2] == str(home / "bench" / "schedule-nightly.lock")
    run_at = command.index("run")
    assert command[run_at - 1] == "bench"
    assert command[run_at + 1:run_at + 4] == [str(matrix), "--db", str(database)]
    assert command[-3:] == [">>", str(home / "bench" / "schedule-nightly.log"), "2>&1"]


def test_the_systemd_units_run_the_same_command_on_the_same_schedule(tmp_path):
    matrix, database = EXAMPLES / "bench-local.yaml", tmp_path / "bench.sqlite"

    service_file, timer_file = schedule.install_systemd("30 2 * * 1-5", matrix, database, "nightly",
                                                        unit_dir=tmp_path / "units")

    service, timer = (_unit(f.path) for f in (service_file, timer_file))
    assert service_file.path.name == "astrostack-bench-nightly.service"
    assert timer_file.path.name == "astrostack-bench-nightly.timer"
    assert service["Service"]["Type"] == "oneshot"
    command = shlex.split(service["Service"]["ExecStart"])
    assert Path(command[0]).name == "flock" and command[1] == "-n"
    assert command[-5:] == ["bench", "run", str(matrix), "--db", str(database)]
    assert timer["Timer"]["OnCalendar"] == "Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00"
    assert timer["Install"]["WantedBy"] == "timers.target"


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize(("expr", "calendar"), [
    ("30 2 * * 1-5", "Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00"),
    ("*/15 * * * *", "*-*-* *:00,15,30,45:00"),
    ("0 3 1 jan,jul *", "*-01,07-01 03:00:00"),
    ("0 0 * * 7", "Sun *-*-* 00:00:00"),
])
def test_cron_expressions_become_systemd_calendars(expr, calendar):
    assert schedule.on_calendar(expr) == calendar
    if shutil.which("systemd-analyze"):
        checked = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(("expr", "names"), [
    ("* * * *", "5 fields"),
    ("60 * * * *", "minute field '60'"),
    ("* 24 * * *", "hour field '24'"),
    ("* * 0 * *", "day of month field '0'"),
    ("* * * foo *", "month field 'foo'"),
    ("* * * * 5-1", "day of week field '5-1'"),
    ("*/0 * * * *", "minute field '*/0'"),
])
def test_a_bad_cron_expression_is_one_line_naming_the_field(expr, names):
    with pytest.raises(InvalidInput) as caught:
        schedule.parse_cron(expr)
    assert names in str(caught.value) and "\n" not in str(caught.value)


def test_systemd_refuses_day_of_month_and_day_of_week_together():
    with pytest.raises(InvalidInput, match="both day of month and day of week"):
        schedule.on_calendar("0 0 1 * mon")


def test_without_cron_the_schedule_says_so_and_offers_systemd(tmp_path, monkeypatch):
    monkeypatch.setattr(schedule, "CRON_DIR", tmp_path / "no-cron.d")

    with pytest.raises(schedule.ScheduleError, match="cron is not installed") as caught:
        schedule.install_cron("0 * * * *", EXAMPLES / "bench-local.yaml", tmp_path / "b.sqlite", "x")
    assert "--systemd" in str(caught.value)


def test_schedule_dry_run_prints_the_entry_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "astrostack-bench-local"

    code = bench_main(["bench", "schedule", str(EXAMPLES / "bench-local.yaml"), "--cron", "0 4 * * *",
                       "--dry-run", "--path", str(target)])

    out = capsys.readouterr().out
    assert code == 0 and not target.exists()
    assert f"# would write {target}:" in out
    (entry,) = [line for line in out.splitlines() if line.startswith("0 4 * * * root ")]
    assert shlex.split(entry.split(None, 6)[6])[1] == "-n"


def bench_main(argv: list[str]) -> int:
    from astrostack.cli import bench_cmds
    from astrostack.cli import main as cli_main

    if not any(group.name == "bench" for group in cli_main.app.registered_groups):
        cli_main.app.add_typer(bench_cmds.app, name="bench")
    return cli_main.main(argv)
