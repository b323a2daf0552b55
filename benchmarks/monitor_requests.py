"""What the monitor costs the cloud, counted on the real local OpenStack.

    python benchmarks/monitor_requests.py [--config 2x4 --config 4x16]

Each configuration is deployed by ``lifecycle.up`` (the user's code path: the
real Heat, Nova, Neutron, Keystone and the real SSH probes), with every HTTP
request the process sends counted where it leaves: a wrapper around
``requests.adapters.HTTPAdapter.send`` (keystoneauth and openstacksdk send
through it) notes the time, method, service (by port) and path, and one around
``SshAccess.run`` counts the SSH round trips of the node probe. Requests are
binned into up's phases by the phase times in the cluster record.

Printed per phase: seconds, HTTP requests by service, requests per second,
SSH round trips; then requests per host, which must not grow with the host
count for the stack and hosts phases (one resource list per poll, whatever
the size). Detection latency is the time from the last host's wait condition
completing (Heat's updated_time of the wait conditions, 1 s resolution) to
the hosts phase ending, i.e. the monitor noticing.

Needs a running local cloud (`astrostack local start`) and astrostack/mpi-base.
Exit 0 if requests per second in the stack and hosts phases stay under
MAX_RPS and detection latency under the poll cap plus one second.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import requests.adapters
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from astrostack import lifecycle, stack  # noqa: E402
from astrostack.cluster import access  # noqa: E402
from astrostack.errors import AstrostackError  # noqa: E402
from astrostack.monitor import PollPolicy  # noqa: E402
from astrostack.spec import spec_from_dict  # noqa: E402

SERVICES = {15000: "keystone", 18774: "nova", 19696: "neutron", 18776: "cinder", 19292: "glance",
            18004: "heat", 18000: "heat-cfn", 18778: "placement", 5050: "registry"}
MAX_RPS = 5.0
PHASES = ("stack", "hosts", "nodes")


class Counting:
    """Every HTTP request and SSH round trip of this process, with its wall-clock time."""

    def __init__(self) -> None:
        self.http: list[tuple[float, str, str, str]] = []  # (time, method, service, path)
        self.ssh: list[float] = []
        self.lock = threading.Lock()

    def install(self) -> None:
        send, run = requests.adapters.HTTPAdapter.send, access.SshAccess.run
        counting = self

        def counted_send(adapter, request, *args, **kwargs):
            parts = urlsplit(request.url)
            service = SERVICES.get(parts.port or 0, f"{parts.hostname}:{parts.port}")
            with counting.lock:
                counting.http.append((time.time(), request.method, service, parts.path))
            return send(adapter, request, *args, **kwargs)

        def counted_run(self_, *args, **kwargs):
            with counting.lock:
                counting.ssh.append(time.time())
            return run(self_, *args, **kwargs)

        requests.adapters.HTTPAdapter.send = counted_send
        access.SshAccess.run = counted_run

    def reset(self) -> None:
        with self.lock:
            self.http.clear()
            self.ssh.clear()


def spec_for(hosts: int, nodes: int, index: int):
    data = yaml.safe_load((ROOT / "examples" / "local.yaml").read_text())
    data.update(name=f"bench-mr-{index}", hosts=hosts, nodes=nodes)
    data["network"]["cidr"] = f"10.{140 + index}.0.0/24"
    return spec_from_dict(data)


def heat_times(spec) -> dict[str, float]:
    """From Heat's events (1 s resolution): when the last host's wait condition went
    CREATE_COMPLETE (Heat noticed its signal) and when the stack did."""
    from astrostack import cloud

    heat = stack.Heat(cloud.connect(spec.cloud))
    ref = heat.find(spec.name)
    times: dict[str, float] = {}
    if ref is None:
        return times
    for event in heat.events(ref, limit=500):
        status = str(event.get("resource_status", ""))
        if "_" not in status:  # some Heat versions split action and status
            status = f"{event.get('resource_action')}_{status}"
        if status != "CREATE_COMPLETE":
            continue
        at = datetime.fromisoformat(str(event["event_time"]).replace("Z", "")).replace(tzinfo=timezone.utc).timestamp()
        name = event.get("resource_name")
        if name in (stack.MANAGER_WAIT, stack.NFS_WAIT, stack.WORKER_WAIT):
            times["last_wait"] = max(times.get("last_wait", 0.0), at)
        elif name == spec.name:
            times["stack_complete"] = at
    return times


def measure(counting: Counting, hosts: int, nodes: int, index: int) -> dict:
    spec = spec_for(hosts, nodes, index)
    counting.reset()
    record = lifecycle.up(spec)
    http, ssh = list(counting.http), list(counting.ssh)
    heat_at = heat_times(spec)
    lifecycle.down(spec.name)
    rows = {}
    for name in PHASES:
        entry = record.phases[name]
        start, end = entry.started.timestamp(), entry.finished.timestamp()
        inside = [r for r in http if start <= r[0] < end]
        rows[name] = {"seconds": end - start, "http": len(inside), "ssh": sum(start <= t < end for t in ssh),
                      "by_service": Counter(r[2] for r in inside),
                      "heat_gets": Counter(_shape(r[3]) for r in inside if r[2] == "heat" and r[1] == "GET")}
    hosts_end = record.phases["hosts"].finished.timestamp()
    latency = {key: hosts_end - at for key, at in heat_at.items()}
    return {"hosts": hosts, "nodes": nodes, "phases": rows, "latency": latency, "total_http": len(http)}


def _shape(path: str) -> str:
    """A Heat path with its ids replaced, e.g. /v1/{project}/stacks/{name}/{id}/resources."""
    parts = path.split("/")
    if len(parts) > 2:
        parts[2] = "{project}"
    if len(parts) > 5 and parts[3] == "stacks":
        parts[4], parts[5] = "{name}", "{id}"
    return "/".join(parts)


def report(results: list[dict]) -> int:
    worst_rps, worst_latency = 0.0, 0.0
    for result in results:
        print(f"\n{result['hosts']} hosts / {result['nodes']} nodes: {result['total_http']} HTTP requests in all "
              f"(pre-checks, image, stack, monitor, records)")
        print(f"  {'phase':<6} {'s':>6} {'HTTP':>6} {'req/s':>6} {'per host':>8} {'SSH':>5}  by service")
        for name, row in result["phases"].items():
            rps = row["http"] / row["seconds"] if row["seconds"] else 0.0
            if name in ("stack", "hosts"):
                worst_rps = max(worst_rps, rps)
            services = ", ".join(f"{k} {v}" for k, v in row["by_service"].most_common())
            print(f"  {name:<6} {row['seconds']:6.1f} {row['http']:6d} {rps:6.2f} {row['http'] / result['hosts']:8.1f} "
                  f"{row['ssh']:5d}  {services}")
        gets = defaultdict(int)
        for name in ("stack", "hosts"):
            for shape, count in result["phases"][name]["heat_gets"].items():
                gets[shape] += count
        for shape, count in sorted(gets.items(), key=lambda item: -item[1])[:4]:
            print(f"    heat GET {shape}: {count}")
        latency = result["latency"]
        if "stack_complete" in latency:
            worst_latency = max(worst_latency, latency["stack_complete"])
            print(f"  detection: hosts phase ended {latency['stack_complete']:.1f} s after Heat marked the stack "
                  f"complete, {latency.get('last_wait', float('nan')):.1f} s after the last wait condition completed "
                  "(Heat's event times, 1 s resolution)")
    cap = PollPolicy().maximum
    print(f"\nworst stack/hosts request rate {worst_rps:.2f}/s (target < {MAX_RPS}); worst detection "
          f"{worst_latency:.1f} s (target < poll cap {cap:.0f} s + 1)")
    return 0 if worst_rps < MAX_RPS and worst_latency < cap + 1 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="HOSTSxNODES (default 2x4 and 4x16)")
    args = parser.parse_args()
    counting = Counting()
    counting.install()
    results = []
    for index, config in enumerate(args.config or ["2x4", "4x16"]):
        hosts, nodes = (int(x) for x in config.split("x"))
        print(f"up {config} ...", flush=True)
        try:
            results.append(measure(counting, hosts, nodes, index))
        except AstrostackError as exc:  # up rolled back; its requests say nothing about a monitor at rest
            print(f"up {config} failed, not counted: {exc}", flush=True)
            return 1
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
