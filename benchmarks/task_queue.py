"""Task throughput of a task-queue cluster by worker count, on the local cloud
(or any cloud: --cloud), and the tool's overhead per task.

For each worker count: `up` a task-queue cluster, write N tiny files on the
share, run a task-map job of N tasks (`true`, or --sleep seconds each), read
its summary (tasks/s as the driver measured it: first submit to last result),
then `down`. Overhead per task = the job's wall time as astrostack saw it
(SSH, driver start, Dask connect, summary) minus what the tasks themselves
took, divided by N. Prints one line per point and a table.

    python benchmarks/task_queue.py --workers 1 2 4 --tasks 400 [--sleep 0.05]
"""

from __future__ import annotations

import argparse
import sys
import time

from astrostack import lifecycle, state
from astrostack.cluster.access import host_access
from astrostack.spec import spec_from_dict
from astrostack.taskqueue import job as task_map


def spec_for(workers: int, cloud: str, cidr: str, processes: int):
    return spec_from_dict({
        "name": f"bench-tq-{workers}", "kind": "task-queue", "cloud": cloud, "hosts": workers + 1,
        "servers": {"manager": {"flavor": "m1.small"}, "worker": {"flavor": "m1.small"}, "nfs": {"flavor": "m1.tiny"}},
        "ssh": {"allowed_cidr": "172.24.4.1/32"}, "network": {"cidr": cidr}, "nfs": {"volume_size_gb": 2},
        "registry": {"url": "172.24.4.1:5050"} if cloud == "local" else {},
        "task_queue": {"processes": processes, "threads": 1, "redis": "scheduler"},
        "timeouts": {"stack_create": 600, "hosts_ready": 600, "nodes_ready": 600, "delete": 600},
    }, source="benchmark spec")


def point(workers: int, args: argparse.Namespace) -> dict:
    spec = spec_for(workers, args.cloud, args.cidr, args.processes)
    started = time.monotonic()
    lifecycle.up(spec)
    up_s = time.monotonic() - started
    try:
        manager = host_access(spec.name, "manager")
        made = manager.run(f"mkdir -p /mnt/share/bench && cd /mnt/share/bench && "
                           f"for i in $(seq 1 {args.tasks}); do : > t$i; done", timeout=300)
        if not made.ok:
            raise SystemExit(f"cannot write the inputs: {made.output}")
        command = ["sleep", str(args.sleep)] if args.sleep > 0 else ["true"]
        job = task_map.task_map_from_dict({"profile": "task-map", "name": "bench", "inputs": "bench/t*",
                                           "command": command, "retries": 0, "timeout_s": 3600})
        result = task_map.run_task_map(state.load(spec.name), job)
        summary = result.summary
        work_s = args.tasks * args.sleep / max(1, workers * args.processes)
        return {"workers": workers * args.processes, "tasks": summary.get("tasks"), "ok": summary.get("succeeded"),
                "tasks_per_s": summary.get("tasks_per_s"), "job_s": round(result.seconds, 2), "up_s": round(up_s, 1),
                "overhead_ms_per_task": round(1000 * max(0.0, result.seconds - work_s) / args.tasks, 2)}
    finally:
        lifecycle.down(spec.name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--processes", type=int, default=1, help="Dask worker processes per worker VM")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each task sleeps (0: `true`)")
    parser.add_argument("--cloud", default="local")
    parser.add_argument("--cidr", default="10.63.0.0/24")
    args = parser.parse_args(argv)
    rows = []
    for workers in args.workers:
        row = point(workers, args)
        print(row, flush=True)
        rows.append(row)
    print(f"\n{'dask workers':>12} {'tasks':>6} {'tasks/s':>8} {'job s':>7} {'overhead ms/task':>17} {'up s':>6}")
    for row in rows:
        print(f"{row['workers']:>12} {row['tasks']:>6} {row['tasks_per_s']:>8} {row['job_s']:>7} "
              f"{row['overhead_ms_per_task']:>17} {row['up_s']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
