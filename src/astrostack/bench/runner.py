"""Run a bench matrix: for every point and repeat, deploy, run the job, destroy.

What is measured, and how (the paper's Table 1 terms in brackets):

``deploy_s`` (overall deployment time, 整体部署时间: "from downloading the
    images from the private registry until the cluster is deployed")
    The wall time of the collaborator's ``deploy`` call, on the injected
    clock: for :class:`LiveCluster` the whole ``lifecycle.up`` on fresh VMs,
    so no image is on any host when it starts. It covers the cloud pre-checks
    (on the local cloud: building the images once, and ``docker save``-staging
    the application image onto the cluster's share, every deploy), the Heat
    stack, the hosts booting and joining, the manager publishing the image to
    the cluster registry, every host pulling it, and every MPI rank ready.

``create_s`` (cluster creation time, 集群创建时间: "the servers already hold
    the images; time to deploy a cluster of that size")
    The ``nodes`` phase of the cluster record (``phases.nodes.finished -
    phases.nodes.started``): from every host ready (VMs up, swarm joined,
    share mounted) to every MPI rank running, i.e. creating the containers on
    hosts that already exist. astrostack's hosts are fresh VMs, so this phase
    still includes each host pulling the application image from the
    cluster's own registry on the private network: it is an upper bound of
    the paper's creation time (whose servers had cached the image). A nodes
    phase on hosts with a warm image cache would need a "re-create the nodes"
    step in the lifecycle, which does not exist yet.

``compute_s`` (cluster compute time, 集群计算时间: "from the command start to
    the results")
    ``finished - started`` of the job runner's result (datetimes or epoch
    seconds); if it carries neither, the wall time of the ``run_job`` call.

``ratio`` (部署与计算时间比) = ``deploy_s / compute_s`` (Table 1 prints it as a
    percentage: 13.8 s / 619.9 s = 2.23 %).

Every phase timestamp goes into the ``phases`` JSON column: the record's
``stack``, ``hosts`` and ``nodes`` phases, plus ``bench`` with the start,
finish and seconds of the bench's own ``deploy``, ``job`` and ``destroy`` calls.

Order: repeat-major (every point once, then every point again, ...), so slow
drift of the cloud spreads over all points instead of one.

A point that fails (deploy, job, or a non-zero job exit code) is stored with
status ``failed``, its error and its evidence directory (the deploy's evidence,
else the job's directory); its cluster is destroyed in every case (a no-op
when ``up`` already rolled it back). Then the run goes on, or stops with
``fail_fast``.

The tool's own overhead = the run's wall time minus the time spent inside
the collaborator's ``deploy``, ``run_job`` and ``destroy`` calls (the waits on
Heat, Docker and the job); it is stored with the run.

Runs never overlap: :func:`run_bench` holds an exclusive ``fcntl`` lock on
``<ASTROSTACK_HOME>/bench/run.lock`` for the whole run (one bench at a time on
a machine: two would also compete for CPU and distort each other's timings).
A second run exits at once with :data:`EXIT_BUSY` and records nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from astrostack import paths
from astrostack.bench import db
from astrostack.bench.matrix import BenchMatrix, Point
from astrostack.errors import EXIT_BUSY, AstrostackError, BenchBusy, BenchFailed, InvalidInput
from astrostack.locks import pid_lock

if TYPE_CHECKING:
    from astrostack.lifecycle import Runtime
    from astrostack.spec import ClusterSpec
    from astrostack.state import ClusterRecord

PointSink = Callable[[db.PointRow], None]
__all__ = ["EXIT_BUSY", "BenchBusy", "BenchFailed", "LiveCluster", "run_bench", "run_matrix"]


# The collaborator ---------------------------------------------------------------


class JobOutcome(Protocol):
    """What the bench reads from the job runner's result."""

    exit_code: int
    started: Any  # datetime or epoch seconds
    finished: Any
    job_dir: Any


class Cluster(Protocol):
    """Deploy, run a job on, and destroy a cluster (injected; see :class:`LiveCluster`)."""

    def deploy(self, spec: ClusterSpec) -> ClusterRecord: ...

    def run_job(self, record: ClusterRecord, job: dict[str, Any]) -> JobOutcome: ...

    def destroy(self, spec: ClusterSpec) -> None: ...


class LiveCluster:
    """The real collaborator: ``lifecycle.up`` / ``lifecycle.down`` and ``job.run_job``.

    It destroys only clusters it started to deploy: a cluster that existed
    before the bench (same name) is refused and left alone.
    """

    def __init__(self, runtime: Optional[Runtime] = None):
        from astrostack.lifecycle import Runtime

        self.runtime = runtime or Runtime()
        self.started: set[str] = set()

    def deploy(self, spec: ClusterSpec) -> ClusterRecord:
        from astrostack import lifecycle, state

        if importlib.util.find_spec("astrostack.job") is None:  # before creating anything
            raise AstrostackError("the job runner (astrostack.job) is not installed; nothing was deployed")
        if state.exists(spec.name):
            raise InvalidInput(f"cluster {spec.name} exists already; a bench point needs a fresh deploy",
                               hint=f"`astrostack down {spec.name}` first")
        self.started.add(spec.name)
        return lifecycle.up(spec, keep_on_failure=False, runtime=self.runtime)

    def run_job(self, record: ClusterRecord, job: dict[str, Any]) -> JobOutcome:
        from astrostack import job as job_runner  # written separately; imported when first used

        return job_runner.run_job(record, job, self.runtime)

    def destroy(self, spec: ClusterSpec) -> None:
        from astrostack import lifecycle

        if spec.name in self.started:
            lifecycle.down(spec.name, cloud_name=spec.cloud, runtime=self.runtime)
            self.started.discard(spec.name)


# Timing -----------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.isoformat()


class Waits:
    """Times every call into the collaborator; ``total_s`` is the time spent waiting."""

    def __init__(self, clock: Callable[[], float], now: Callable[[], datetime]):
        self.clock = clock
        self.now = now
        self.total_s = 0.0

    def call(self, marks: dict[str, Any], step: str, function: Callable[..., Any], *args: Any) -> Any:
        started_at, started = self.now(), self.clock()
        try:
            return function(*args)
        finally:
            seconds = self.clock() - started
            self.total_s += seconds
            marks[step] = {"started": iso(started_at), "finished": iso(self.now()), "seconds": seconds}


@dataclass
class Attempt:
    """One deployment of one point while it runs."""

    spec: ClusterSpec
    job_spec: dict[str, Any] = field(default_factory=dict)
    marks: dict[str, Any] = field(default_factory=dict)
    record: Optional[ClusterRecord] = None
    job: Optional[JobOutcome] = None
    errors: list[str] = field(default_factory=list)
    evidence_dir: Optional[str] = None
    job_exit_code: Optional[int] = None

    def fail(self, message: str, evidence: Any = None) -> None:
        self.errors.append(message)
        if evidence and not self.evidence_dir:
            self.evidence_dir = str(evidence)


def measure_point(matrix: BenchMatrix, point: Point, repeat: int, run_id: int, cluster: Cluster,
                  waits: Waits) -> db.PointRow:
    """Deploy, run the job, destroy (always); the row to store, ok or failed."""
    attempt = Attempt(spec=matrix.point_spec(point), job_spec=dict(matrix.job))
    try:
        attempt.record = waits.call(attempt.marks, "deploy", cluster.deploy, attempt.spec)
        attempt.job = waits.call(attempt.marks, "job", cluster.run_job, attempt.record, dict(matrix.job))
        _check_job_exit(attempt)
    except AstrostackError as exc:
        attempt.job_exit_code = getattr(exc, "job_exit_code", attempt.job_exit_code)
        attempt.fail(str(exc), getattr(exc, "evidence", None))
    finally:
        _destroy(cluster, waits, attempt)
    return point_row(attempt, point, repeat, run_id)


def _check_job_exit(attempt: Attempt) -> None:
    job = attempt.job
    attempt.job_exit_code = job.exit_code
    if job.exit_code != 0:
        attempt.fail(f"job exited with {job.exit_code}", job.job_dir)


def _destroy(cluster: Cluster, waits: Waits, attempt: Attempt) -> None:
    try:
        waits.call(attempt.marks, "destroy", cluster.destroy, attempt.spec)
    except AstrostackError as exc:
        attempt.fail(f"destroy: {exc}")


def point_row(attempt: Attempt, point: Point, repeat: int, run_id: int) -> db.PointRow:
    spec, record, job = attempt.spec, attempt.record, attempt.job
    deploy_s = attempt.marks["deploy"]["seconds"] if record else None
    compute_s = job_seconds(job, attempt.marks) if job else None
    return db.PointRow(
        run_id=run_id, hosts=point.hosts, nodes=point.nodes, repeat=repeat, cluster=spec.name, cloud=spec.cloud,
        flavors={role: getattr(spec.servers, role).flavor for role in ("manager", "worker", "nfs")},
        image_digests=dict(record.image_digests) if record else {},
        spec_hash=spec.spec_hash(),
        deploy_s=deploy_s,
        create_s=creation_seconds(record) if record else None,
        compute_s=compute_s,
        ratio=deploy_s / compute_s if deploy_s is not None and compute_s else None,
        phases=phase_timestamps(record, attempt.marks),
        job_exit_code=attempt.job_exit_code,
        status="failed" if attempt.errors else "ok",
        error="; ".join(attempt.errors),
        evidence_dir=attempt.evidence_dir or _job_dir(job) or (record.evidence_dir if record else None),
        job=job_facts(attempt.job_spec, job),
    )


def job_facts(asked: dict[str, Any], job: Optional[JobOutcome]) -> dict[str, Any]:
    """What ran: the profile, the program's parameters as run (sagecal-mpi: with the -n chosen),
    the threads per rank and where that number came from, the ranks; the matrix's job (with the job's
    default params) if it never ran."""
    facts: dict[str, Any] = {"profile": asked.get("profile", "mpi")}
    params = getattr(job, "params", None) or asked_params(asked)
    facts["params"] = [str(part) for part in params]
    for name in ("threads", "threads_source", "ranks"):
        value = getattr(job, name, None)
        if value not in (None, ""):
            facts[name] = value
    return facts


def asked_params(asked: dict[str, Any]) -> list[Any]:
    """The parameters the matrix's job would run with: its params, or the profile's defaults."""
    from astrostack.job import SagecalJob, job_from_dict

    try:
        job = job_from_dict(asked)
    except InvalidInput:  # a matrix is validated when loaded; whatever this is, record what it says
        return list(asked.get("params") or asked.get("command") or [])
    return list(job.params) if isinstance(job, SagecalJob) else list(job.command)


def creation_seconds(record: ClusterRecord) -> Optional[float]:
    """The record's nodes phase (see the module docstring), or None if it has none."""
    nodes = record.phases.get("nodes")
    if not nodes or not nodes.started or not nodes.finished:
        return None
    return (nodes.finished - nodes.started).total_seconds()


def job_seconds(job: JobOutcome, marks: dict[str, Any]) -> float:
    started, finished = getattr(job, "started", None), getattr(job, "finished", None)
    if isinstance(started, datetime) and isinstance(finished, datetime):
        return (finished - started).total_seconds()
    if isinstance(started, (int, float)) and isinstance(finished, (int, float)):
        return float(finished - started)
    return marks["job"]["seconds"]


def phase_timestamps(record: Optional[ClusterRecord], marks: dict[str, Any]) -> dict[str, Any]:
    phases = {name: entry.model_dump(mode="json") for name, entry in record.phases.items()} if record else {}
    phases["bench"] = marks
    return phases


def _job_dir(job: Optional[JobOutcome]) -> Optional[str]:
    job_dir = getattr(job, "job_dir", None)
    return str(job_dir) if job_dir else None


# The run ------------------------------------------------------------------------


@dataclass
class RunSummary:
    run_id: int
    matrix: str
    status: str
    rows: list[db.PointRow]
    wall_s: float
    waiting_s: float
    error: Optional[str] = None

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.waiting_s

    @property
    def overhead_pct(self) -> float:
        return 100.0 * self.overhead_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def failed(self) -> list[db.PointRow]:
        return [row for row in self.rows if row.status == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "matrix": self.matrix, "status": self.status, "error": self.error,
                "points": len(self.rows), "failed": len(self.failed), "wall_s": self.wall_s,
                "waiting_s": self.waiting_s, "overhead_s": self.overhead_s, "overhead_pct": self.overhead_pct}


def run_matrix(matrix: BenchMatrix, cluster: Cluster, conn: sqlite3.Connection, *, fail_fast: bool = False,
               clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = utcnow,
               on_point: Optional[PointSink] = None) -> RunSummary:
    """Measure every point ``matrix.repeats`` times and store each as it finishes."""
    run_started = clock()
    waits = Waits(clock, now)
    run_id = db.start_run(conn, matrix.name, iso(now()))
    rows: list[db.PointRow] = []
    try:
        for repeat in range(matrix.repeats):
            for point in matrix.points:
                row = measure_point(matrix, point, repeat, run_id, cluster, waits)
                db.add_point(conn, row)
                rows.append(row)
                if on_point:
                    on_point(row)
                if fail_fast and row.status == "failed":
                    return _finish(conn, matrix, run_id, rows, clock() - run_started, waits, now)
    except BaseException as exc:  # interrupted, or a bug: the run is failed, the error goes up
        summary = RunSummary(run_id, matrix.name, "failed", rows, clock() - run_started, waits.total_s,
                             error=f"stopped: {exc.__class__.__name__}: {exc}".rstrip(": "))
        _store_finish(conn, summary, now)
        raise
    return _finish(conn, matrix, run_id, rows, clock() - run_started, waits, now)


def _finish(conn: sqlite3.Connection, matrix: BenchMatrix, run_id: int, rows: list[db.PointRow], wall_s: float,
            waits: Waits, now: Callable[[], datetime]) -> RunSummary:
    failed = [row for row in rows if row.status == "failed"]
    error = f"{len(failed)} of {len(rows)} point(s) failed; first: {failed[0].error}" if failed else None
    summary = RunSummary(run_id, matrix.name, "failed" if failed else "ok", rows, wall_s, waits.total_s, error)
    _store_finish(conn, summary, now)
    return summary


def _store_finish(conn: sqlite3.Connection, summary: RunSummary, now: Callable[[], datetime]) -> None:
    failed = summary.failed
    db.finish_run(conn, summary.run_id, finished=iso(now()), status=summary.status, error=summary.error,
                  evidence_dir=failed[0].evidence_dir if failed else None,
                  wall_s=summary.wall_s, waiting_s=summary.waiting_s)


def run_bench(matrix: BenchMatrix, cluster: Cluster, db_path: str | Path, *, fail_fast: bool = False,
              lock_file: Optional[Path] = None, clock: Callable[[], float] = time.monotonic,
              now: Callable[[], datetime] = utcnow, on_point: Optional[PointSink] = None) -> RunSummary:
    """:func:`run_matrix` under the bench lock, on the database at ``db_path``.

    Raises :class:`BenchBusy` (exit 5) before recording anything if another run holds the lock.
    """
    with run_lock(lock_file or default_lock_file()), db.open_db(db_path) as conn:
        return run_matrix(matrix, cluster, conn, fail_fast=fail_fast, clock=clock, now=now, on_point=on_point)


# The lock -----------------------------------------------------------------------


def default_lock_file() -> Path:
    return paths.subdir("bench") / "run.lock"


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[Path]:
    """Hold the bench lock, or raise :class:`BenchBusy` at once."""

    def busy(holder: str) -> BenchBusy:
        return BenchBusy(f"another bench run (pid {holder}) is running; this one did nothing",
                         hint=f"lock {path}; runs never overlap")

    with pid_lock(path, busy) as held:
        yield held
