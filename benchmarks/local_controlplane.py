"""Cold start and idle memory of the local cloud's control plane (a real OpenStack here).

    python benchmarks/local_controlplane.py [--settle 60] [--json]

Stops every service, starts them again (`astrostack local start`, with the
bootstrap already done) and times it until every API answers; then waits
`--settle` seconds and sums the resident memory (RSS, and PSS, which counts
pages shared between a master and its forked worker once) of every process
of every service, and their CPU use over 20 s. Targets: cold start <= 60 s, idle RSS <= 3 GiB; exits 1 if
one is missed. Needs root and a local cloud that has started once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

try:
    from astrostack.local import controlplane, supervisor
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from astrostack.local import controlplane, supervisor

COLD_START_TARGET_S = 60.0
IDLE_RSS_TARGET = 3 * 2**30


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes so far (clock ticks of /proc/PID/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def idle_cpu_percent(window_s: float) -> float:
    """CPU the idle services use, in % of one core, over a window."""
    pids = [pid for row in controlplane.status(say=lambda line: None) if row.pid
            for pid in supervisor.group_members(row.pid)]
    before = cpu_seconds(pids)
    time.sleep(window_s)
    return 100 * (cpu_seconds(pids) - before) / window_s


def cold_start(quiet: bool) -> tuple[float, float]:
    """(stop seconds, start seconds until every API answers)."""
    say = (lambda line: None) if quiet else print
    began = time.monotonic()
    controlplane.stop(say=say)
    stopped = time.monotonic()
    controlplane.start(say=say)
    return stopped - began, time.monotonic() - stopped


def idle_memory() -> dict[str, dict[str, int]]:
    """Per service: process count, RSS and PSS of its process group."""
    memory = {}
    for row in controlplane.status(say=lambda line: None):
        members = supervisor.group_members(row.pid) if row.pid else []
        memory[row.name] = {"processes": len(members), "rss": supervisor.rss_bytes(members),
                            "pss": pss_bytes(members)}
    return memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to let the services go idle")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    stop_s, start_s = cold_start(quiet=args.json)
    time.sleep(args.settle)
    memory = idle_memory()
    cpu = idle_cpu_percent(20.0)
    down = [row.name for row in controlplane.status(say=lambda line: None) if row.answering is False]
    rss = sum(m["rss"] for m in memory.values())
    pss = sum(m["pss"] for m in memory.values())
    processes = sum(m["processes"] for m in memory.values())
    result = {"stop_s": round(stop_s, 1), "cold_start_s": round(start_s, 1), "idle_rss_bytes": rss,
              "idle_pss_bytes": pss, "processes": processes, "idle_cpu_percent": round(cpu, 1), "not_answering": down, "services": memory}
    if args.json:
        print(json.dumps(result))
    else:
        for name, m in sorted(memory.items(), key=lambda item: -item[1]["rss"]):
            print(f"  {name:<20} {m['processes']:>2} proc  RSS {m['rss'] / 2**20:6.0f} MiB  PSS {m['pss'] / 2**20:6.0f} MiB")
        print(f"stop {stop_s:.1f} s; cold start {start_s:.1f} s (target <= {COLD_START_TARGET_S:.0f} s, "
              f"ratio {start_s / COLD_START_TARGET_S:.2f})")
        print(f"idle after {args.settle:.0f} s: RSS {rss / 2**30:.2f} GiB (target <= 3 GiB, ratio "
              f"{rss / IDLE_RSS_TARGET:.2f}), PSS {pss / 2**30:.2f} GiB, {processes} processes; idle CPU {cpu:.1f} % of one core")
        if down:
            print(f"not answering: {', '.join(down)}")
    return 0 if start_s <= COLD_START_TARGET_S and rss <= IDLE_RSS_TARGET and not down else 1


if __name__ == "__main__":
    sys.exit(main())
