"""How long `astrostack render` takes at the scales the issue names.

    python benchmarks/render.py [--repeats 30] [--profile]

Times `astrostack.render.render()` writing into a temporary directory for
12 hosts / 1000 nodes (overlay /22) and 100 hosts / 400 nodes, after one
warm-up each; prints median and p90 in ms and the ratio to the 0.1 s target;
exits 1 if a median misses it. `--profile` adds where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    from astrostack.render import render
    from astrostack.spec import ClusterSpec, spec_from_dict
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from astrostack.render import render
    from astrostack.spec import ClusterSpec, spec_from_dict

TARGET_S = 0.1
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyOnly astrostack-bench"
REAL_CLOUD = {"cloud": "kasi", "ssh": {"allowed_cidr": "203.0.113.7/32"}}
SCENARIOS = {
    "12 hosts / 1000 nodes": {"name": "bench-12x1000", "hosts": 12, "nodes": 1000,
                              "overlay": {"subnet": "10.0.12.0/22"}, **REAL_CLOUD},
    "100 hosts / 400 nodes": {"name": "bench-100x400", "hosts": 100, "nodes": 400,
                              "overlay": {"subnet": "10.0.12.0/22"}, **REAL_CLOUD},
}


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, round(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def time_render(spec: ClusterSpec, repeats: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="astrostack-bench-") as tmp:
        out = Path(tmp) / spec.name
        render(spec, out, ssh_public_key=PUBLIC_KEY)  # warm-up: imports, caches, first mkdir
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            render(spec, out, ssh_public_key=PUBLIC_KEY)
            samples.append(time.perf_counter() - start)
    return samples


def profile_render(spec: ClusterSpec, repeats: int, top: int = 15) -> str:
    with tempfile.TemporaryDirectory(prefix="astrostack-profile-") as tmp:
        out = Path(tmp) / spec.name
        render(spec, out, ssh_public_key=PUBLIC_KEY)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(repeats):
            render(spec, out, ssh_public_key=PUBLIC_KEY)
        profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).sort_stats("cumulative")
    stats.print_stats(top)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed renders per scenario (default 30)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of each scenario")
    args = parser.parse_args(argv)

    missed = []
    print(f"render() to a temporary directory, {args.repeats} repeats after a warm-up; target {TARGET_S * 1000:.0f} ms")
    print(f"{'scenario':<24} {'median ms':>10} {'p90 ms':>10} {'min ms':>10} {'median/target':>14}")
    for label, data in SCENARIOS.items():
        spec = spec_from_dict(data)
        samples = time_render(spec, args.repeats)
        median = statistics.median(samples)
        ratio = median / TARGET_S
        print(f"{label:<24} {median * 1000:>10.2f} {percentile(samples, 0.9) * 1000:>10.2f} "
              f"{min(samples) * 1000:>10.2f} {ratio:>14.2f}")
        if median > TARGET_S:
            missed.append(label)
        if args.profile:
            print(profile_render(spec, args.repeats))
    if missed:
        print(f"MISSED the {TARGET_S * 1000:.0f} ms median target: {', '.join(missed)}")
        return 1
    print("ok: every median is under the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
