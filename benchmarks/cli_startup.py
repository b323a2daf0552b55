"""How long `astrostack --version` and `astrostack --help` take to start.

    python benchmarks/cli_startup.py [--repeats 15]

Runs each as a fresh process (the console script next to this Python, else
`python -m astrostack.cli.main`) after one warm-up, prints the median and the
fastest run in seconds against the 0.2 s target, and which of the heavy
libraries (openstacksdk, docker, matplotlib, pydantic, jinja2) each start
imported; exits 1 if a median misses the target. Before commands loaded
lazily, both took about 0.55-0.7 s on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 0.2
HEAVY = ("openstack", "docker", "matplotlib", "pydantic", "jinja2", "cryptography")
COMMANDS = (["--version"], ["--help"])
ROOT = Path(__file__).resolve().parents[1]


def command() -> list[str]:
    script = Path(sys.executable).parent / "astrostack"
    return [str(script)] if script.exists() else [sys.executable, "-m", "astrostack.cli.main"]


def environment() -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "100"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def time_start(argv: list[str], repeats: int) -> list[float]:
    subprocess.run(command() + argv, capture_output=True, env=environment(), check=True)  # warm-up: disk caches
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command() + argv, capture_output=True, env=environment(), check=True)
        samples.append(time.perf_counter() - start)
    return samples


def heavy_imports(argv: list[str]) -> list[str]:
    probe = (
        "import json, sys\n"
        "from astrostack.cli.main import main\n"
        f"main({argv!r})\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))), "
        "file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environment())
    return json.loads(done.stderr.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    missed = False
    print(f"{'command':<22} {'median s':>9} {'fastest s':>10} {'target s':>9}  heavy imports")
    for argv in COMMANDS:
        samples = time_start(argv, args.repeats)
        median = statistics.median(samples)
        missed |= median > TARGET_S
        heavy = ", ".join(heavy_imports(argv)) or "none"
        print(f"astrostack {' '.join(argv):<11} {median:9.3f} {min(samples):10.3f} {TARGET_S:9.1f}  {heavy}")
    print("ok: under the target" if not missed else "MISSED: a median is over the target")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
