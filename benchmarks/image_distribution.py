"""How N hosts best get the MPI image: `docker pull` from the cluster registry or `docker load` from the share.

    python benchmarks/image_distribution.py [--hosts 2 --hosts 5] [--repeats 3]

Boots the largest N host VMs plus one registry VM directly (``vm.boot_vm``, an
empty ``#cloud-config``, 10.73.0.0/24) sharing a host directory, as a local
cluster does: dockerd in every host trusting the registry, Debian's
docker-registry on the registry VM storing on the share (as nfs.sh). The image
is saved once onto the share, as `up` stages it. Then, for each N, each repeat:

  publish + pull   what nodes.sh does today: an empty registry; the first host
                   `docker load`s the archive and pushes it; the N-1 others
                   pull it at once (the publish and pull parts are also shown)
  (a) pull         the N hosts `docker pull` the image from the registry at once
  (b) load         the N hosts `docker load -i` the archive from the share at once

Each time runs from the first command until the last host has the image;
before each, the image is removed from those hosts. (a) and (b) alternate
their order between repeats. Prints the samples, their medians, the ratio
(a)/(b) and which is faster, for the pure comparison and end to end.

Before each measurement it waits for a quiet machine as benchmarks/local_cloud.py
does (no ``ft-*`` container for 30 s; after 20 min it measures anyway); a median
that includes a sample during which such containers ran is marked ``*``.
Everything is removed on exit. Note: on the local cloud the share is a bind mount of this machine's
disk; on a real cloud both methods read from the NFS VM over the network.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

from local_cloud import (
    MEASUREMENT_ERRORS,
    REGISTRY_PID_FILE,
    ContentionWatch,
    HandCluster,
    bench_spec,
    in_parallel,
    say,
    wait_until_quiet,
)

CIDR = "10.73.0.0/24"
NAME = "bench-id"
DEFAULT_HOSTS = (2, 5)
DEFAULT_REPEATS = 3
IMAGE = "astrostack/mpi-base:latest"
TRANSFER_TIMEOUT_S = 900
METHODS = {"pull": "(a) pull on every host", "load": "(b) load on every host",
           "today": "publish + pull (nodes.sh today)", "publish": "publish: load + push on the first host",
           "pull-others": "pull on the other hosts"}


@dataclass
class Samples:
    """Seconds per repeat of one method at one N; contended if ft-* containers ran meanwhile."""

    seconds: list[float] = field(default_factory=list)
    contended: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def cell(self) -> str:
        samples = ", ".join(f"{s:.1f}" for s in self.seconds)
        return f"{self.median:.1f}{' *' if self.contended else ''} ({samples})"


class Distribution:
    """The VMs, the archive on the share and the image's two references."""

    def __init__(self, hosts: int):
        self.cluster = HandCluster(bench_spec(NAME, hosts, hosts, CIDR), CIDR)
        self.archive = ""
        self.loaded_ref = IMAGE
        self.registry_ref = ""

    def setup(self) -> None:
        cluster = self.cluster
        cluster.create_network()
        self.archive = cluster.stage_image(IMAGE)
        cluster.boot_all()
        in_parallel(lambda host: cluster.start_registry() if host == "nfs" else cluster.start_dockerd(host),
                    ["nfs"] + cluster.hosts)
        self.registry_ref = f"{cluster.registry}/{IMAGE}"

    def sizes_mb(self) -> tuple[float, float]:
        """(image size as the engine reports it, archive size) in MB."""
        image = self.cluster.run("manager", f"docker load -i {self.archive} >/dev/null && "
                                            f"docker image inspect --format '{{{{.Size}}}}' {IMAGE}")
        archive = self.cluster.run("manager", f"stat -c %s {self.archive}")
        return int(image) / 1e6, int(archive) / 1e6

    # states between measurements (not timed)

    def remove_image(self, hosts: Sequence[str]) -> None:
        refs = f"{self.loaded_ref} {self.registry_ref}"
        in_parallel(lambda host: self.cluster.run(
            host, f"docker rmi -f {refs} >/dev/null 2>&1; ! docker image inspect {refs} >/dev/null 2>&1"), hosts)

    def empty_registry(self) -> None:
        """Stop the registry (by its pid), empty its storage, start it again."""
        root = f"{self.cluster.spec.nfs.export_path}/.registry"
        self.cluster.run("nfs", f"pid=$(cat {REGISTRY_PID_FILE}); kill $pid; "
                                f"while kill -0 $pid 2>/dev/null; do sleep 0.2; done; rm -rf {shlex.quote(root)}")
        self.cluster.start_registry()

    # the timed operations

    def pull(self, host: str) -> None:
        self.cluster.run(host, f"docker pull -q {self.registry_ref} >/dev/null", TRANSFER_TIMEOUT_S)

    def load(self, host: str) -> None:
        self.cluster.run(host, f"docker load -q -i {self.archive} >/dev/null && docker image inspect {IMAGE} >/dev/null",
                         TRANSFER_TIMEOUT_S)

    def publish(self) -> None:
        """nodes.sh's publish_staged_images on the first host: load, tag, push."""
        self.cluster.publish_image(self.archive)


def timed_on(action: Callable[[str], None], hosts: Sequence[str]) -> float:
    started = time.monotonic()
    in_parallel(action, hosts)
    return time.monotonic() - started


@dataclass
class Results:
    """Per N: method -> samples."""

    by_hosts: dict[int, dict[str, Samples]] = field(default_factory=dict)

    def add(self, hosts: int, method: str, seconds: float, contended: bool) -> None:
        samples = self.by_hosts.setdefault(hosts, {}).setdefault(method, Samples())
        samples.seconds.append(seconds)
        samples.contended = samples.contended or contended
        say(f"  {hosts} hosts, {METHODS[method]}: {seconds:.1f} s{' (ft-* containers ran)' if contended else ''}")


def measure(what: str, action: Callable[[], float]) -> tuple[float, bool]:
    """Wait for a quiet machine, then time ``action``; (seconds, contended)."""
    wait_until_quiet(what)
    with ContentionWatch() as watch:
        seconds = action()
    return seconds, watch.seen


def measure_publish_and_pull(dist: Distribution, hosts: Sequence[str], results: Results) -> None:
    """Today's path: empty registry; load + push on the first host; the others pull."""
    dist.empty_registry()
    dist.remove_image(hosts)
    spans: dict[str, float] = {}

    def run() -> float:
        started = time.monotonic()
        dist.publish()
        spans["publish"] = time.monotonic() - started
        spans["pull-others"] = timed_on(dist.pull, hosts[1:])
        return spans["publish"] + spans["pull-others"]

    seconds, contended = measure(f"publish + pull, {len(hosts)} hosts", run)
    results.add(len(hosts), "today", seconds, contended)
    for part, part_seconds in spans.items():
        results.add(len(hosts), part, part_seconds, contended)


def measure_transfer(dist: Distribution, hosts: Sequence[str], method: str, results: Results) -> None:
    dist.remove_image(hosts)
    action = dist.pull if method == "pull" else dist.load
    seconds, contended = measure(f"{method}, {len(hosts)} hosts", lambda: timed_on(action, hosts))
    results.add(len(hosts), method, seconds, contended)


def run_repeats(dist: Distribution, host_counts: Sequence[int], repeats: int) -> Results:
    results = Results()
    for count in host_counts:
        hosts = dist.cluster.hosts[:count]
        for repeat in range(repeats):
            say(f"[{count} hosts] repeat {repeat + 1}/{repeats}")
            measure_publish_and_pull(dist, hosts, results)  # leaves the registry full for (a)
            for method in ("pull", "load") if repeat % 2 == 0 else ("load", "pull"):
                measure_transfer(dist, hosts, method, results)
    return results


# --- report ---------------------------------------------------------------------


def faster(a: float, b: float, a_name: str, b_name: str) -> str:
    return f"{b_name}, {a / b:.2f}x" if b < a else f"{a_name}, {b / a:.2f}x"


def report(results: Results, image_mb: float, archive_mb: float, repeats: int) -> None:
    say(f"\n## image distribution: {IMAGE} ({image_mb:.0f} MB unpacked, archive {archive_mb:.0f} MB), "
        f"median of {repeats} (samples) in s\n")
    say("| hosts | (a) docker pull from the registry | (b) docker load from the share | ratio (a)/(b) | faster |")
    say("|---|---|---|---|---|")
    for count, methods in sorted(results.by_hosts.items()):
        pull, load = methods["pull"], methods["load"]
        say(f"| {count} | {pull.cell()} | {load.cell()} | {pull.median / load.median:.2f} | "
            f"{faster(pull.median, load.median, 'pull', 'load')} |")
    say("\n## end to end: nodes.sh today (load + push on the manager, the others pull) vs every host loads\n")
    say("| hosts | today: publish + pull | of which publish (load + push) | of which the others pull "
        "| every host loads | ratio | faster |")
    say("|---|---|---|---|---|---|---|")
    for count, methods in sorted(results.by_hosts.items()):
        today, load = methods["today"], methods["load"]
        publish, pull = methods["publish"], methods["pull-others"]
        say(f"| {count} | {today.cell()} | {publish.median:.1f} | {pull.median:.1f} | {load.cell()} | "
            f"{today.median / load.median:.2f} | {faster(today.median, load.median, 'today', 'load')} |")
    say("\n* = ft-* containers (functional tests) ran during at least one sample")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so the finally below cleans up on SIGTERM too


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", action="append", type=int, help="host counts (repeatable); default 2 and 5")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    host_counts = sorted(set(args.hosts or DEFAULT_HOSTS))
    if host_counts[0] < 2 or args.repeats < 1:
        parser.error("need at least 2 hosts and 1 repeat")
    dist = Distribution(max(host_counts))
    try:
        wait_until_quiet("setup")
        dist.setup()
        image_mb, archive_mb = dist.sizes_mb()
        results = run_repeats(dist, host_counts, args.repeats)
    except MEASUREMENT_ERRORS as exc:
        say(f"FAILED: {exc.__class__.__name__}: {exc}")
        return 2
    finally:
        dist.cluster.close()
    report(results, image_mb, archive_mb, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
