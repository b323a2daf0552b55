"""The bench tool's own overhead: time in a `bench run` not spent waiting on
the cloud, Docker or the job.

    python benchmarks/bench_overhead.py [--sleep 0.2] [--repeats 2]

Runs the paper's Table 1 matrix (examples/bench-table1.yaml: 5 points) through
the real runner, database and lock, with a collaborator that really sleeps
``--sleep`` seconds in each deploy, job and destroy call (real deployments
take minutes, so this is the hard case). Prints the run's wall time, the time
inside those calls and the rest (the overhead) in seconds and as a % of the
run; exits 1 if the overhead reaches the 5 % target.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from astrostack.bench import runner
    from astrostack.bench.matrix import load_matrix
    from astrostack.state import ClusterRecord, PhaseRecord
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
    from astrostack.bench import runner
    from astrostack.bench.matrix import load_matrix
    from astrostack.state import ClusterRecord, PhaseRecord

TARGET_PCT = 5.0
MATRIX = ROOT / "examples" / "bench-table1.yaml"


@dataclass
class SleptJob:
    exit_code: int
    started: datetime
    finished: datetime
    job_dir: str


class SleepingCluster:
    """Each call really sleeps: the time the tool spends waiting."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def deploy(self, spec) -> ClusterRecord:
        started = datetime.now(timezone.utc)
        time.sleep(self.seconds)
        finished = datetime.now(timezone.utc)
        record = ClusterRecord.from_spec(spec, stack_name=spec.name, status="ready")
        middle = started + (finished - started) / 2
        record.phases = {"stack": PhaseRecord(started=started, finished=middle, outcome="done"),
                         "hosts": PhaseRecord(started=middle, finished=middle, outcome="done"),
                         "nodes": PhaseRecord(started=middle, finished=finished, outcome="done")}
        record.image_digests = {spec.application.image: "sha256:" + "0" * 64}
        return record

    def run_job(self, record, job) -> SleptJob:
        started = datetime.now(timezone.utc)
        time.sleep(self.seconds)
        return SleptJob(0, started, started + timedelta(seconds=self.seconds), "/tmp")

    def destroy(self, spec) -> None:
        time.sleep(self.seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds per deploy, job and destroy call")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="astrostack-bench-overhead-") as tmp:
        os.environ["ASTROSTACK_HOME"] = tmp
        matrix = load_matrix(MATRIX).model_copy(update={"repeats": args.repeats})
        started = time.monotonic()
        summary = runner.run_bench(matrix, SleepingCluster(args.sleep), Path(tmp) / "bench.sqlite")
        outside = time.monotonic() - started - summary.wall_s  # lock, database open, schema
    deployments = len(summary.rows)
    print(f"{deployments} deployments ({len(matrix.points)} points x {args.repeats}), "
          f"{args.sleep:.2f} s per deploy/job/destroy call")
    print(f"run wall time   {summary.wall_s:8.3f} s")
    print(f"waiting (calls) {summary.waiting_s:8.3f} s")
    print(f"tool overhead   {summary.overhead_s:8.3f} s = {summary.overhead_pct:.2f} % of the run "
          f"({1000 * summary.overhead_s / deployments:.1f} ms per deployment; target < {TARGET_PCT:.0f} %)")
    everything_pct = 100 * (summary.overhead_s + outside) / (summary.wall_s + outside)
    print(f"before the run  {outside:8.3f} s (lock, database open); overhead counting it: {everything_pct:.2f} %")
    return 0 if summary.status == "ok" and summary.overhead_pct < TARGET_PCT else 1


if __name__ == "__main__":
    sys.exit(main())
