"""The bench tool's own overhead, from a real bench run on the local cloud.

    python benchmarks/bench_overhead.py [--hosts 2 --nodes 4] [--repeats 2]

Runs ``bench run`` of a one-point matrix (examples/bench-local.yaml's spec and
job: the MPI smoke test) through the real runner, database and lock with the
real collaborator (``lifecycle.up``, the job runner, ``lifecycle.down`` on the
local OpenStack). Prints, per deployment:

* the runner's overhead: wall time not spent inside deploy, job or destroy
  (matrix handling, database rows, the lock), in milliseconds;
* the CPU the astrostack process and its children (ssh) used in all, in
  core-seconds: what the tool costs the machine it runs on while it waits on
  the cloud.

Exit 1 if the runner's overhead reaches TARGET_MS per deployment or a
deployment failed. Needs `astrostack local start`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from astrostack.bench import runner
    from astrostack.bench.matrix import Point, load_matrix
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))
    from astrostack.bench import runner
    from astrostack.bench.matrix import Point, load_matrix

TARGET_MS = 500.0
MATRIX = ROOT / "examples" / "bench-local.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="astrostack-bench-overhead-") as tmp:
        matrix = load_matrix(MATRIX).model_copy(update={
            "name": "bench-oh", "repeats": args.repeats, "points": [Point(hosts=args.hosts, nodes=args.nodes)]})
        cpu_before, started = _cpu(), time.monotonic()
        summary = runner.run_bench(matrix, runner.LiveCluster(), Path(tmp) / "bench.sqlite",
                                   lock_file=Path(tmp) / "run.lock")
        outside = time.monotonic() - started - summary.wall_s  # lock, database open, schema
        cpu = _cpu() - cpu_before
    deployments = max(len(summary.rows), 1)
    failed = [row.error for row in summary.rows if row.status != "ok"]
    print(f"{len(summary.rows)} real deployments of {args.hosts} hosts / {args.nodes} nodes on the local cloud "
          f"(deploy, MPI smoke job, destroy); {len(failed)} failed {failed[:1]}")
    print(f"run wall time   {summary.wall_s:8.1f} s")
    print(f"waiting (calls) {summary.waiting_s:8.1f} s")
    overhead_ms = 1000 * (summary.overhead_s + outside) / deployments
    print(f"runner overhead {summary.overhead_s + outside:8.3f} s = {overhead_ms:.0f} ms per deployment "
          f"({summary.overhead_pct:.3f} % of the run; target < {TARGET_MS:.0f} ms)")
    print(f"astrostack CPU  {cpu:8.1f} core-s = {cpu / deployments:.1f} core-s per deployment "
          "(the process and its ssh children, the whole run)")
    return 0 if not failed and overhead_ms < TARGET_MS else 1


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


if __name__ == "__main__":
    sys.exit(main())
