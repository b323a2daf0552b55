"""Synthetic SAGECal data for benchmarks and tests, made with SAGECal itself.

``make_dataset(OUT, ms_count=N)`` writes N small MeasurementSets (distinct
frequencies, as sagecal-mpi's consensus over frequency needs), the 3C196 sky
model and cluster file of SAGECal's own test data, and ``truth.json``:

1. the image's tools stage (python3-casacore, images/sagecal/selfcheck/ms_tool.py)
   makes each MS empty: a LOFAR-like array tracking 3C196, and known
   direction-dependent gains (a SAGECal solutions file, one for all MS);
2. SAGECal's simulation mode fills them: ``sagecal -a 1`` writes the model
   with unit gains into MODEL_DATA, ``sagecal -a 1 -p gains`` the sky
   corrupted by the known gains into DATA;
3. the tools add Gaussian noise to DATA.

``residuals(MS_DIR, SOLUTIONS)`` is the independent check of a calibration:
SAGECal simulates the sky with the solved gains into MODEL_SOLVED, and the
tools give the RMS of DATA - MODEL_DATA (uncalibrated) and DATA -
MODEL_SOLVED (calibrated), to compare with the noise.

Everything runs in containers of the local Docker engine:
``astrostack/sagecal:latest`` and its tools stage, ``astrostack/sagecal-tools:latest``
(``build_images`` builds both from a SAGECal source tarball through the
recipe's local-source path). Command line:

    python -m astrostack.bench.sagecal_data OUT --ms 23 [--tarball ../shared/vendor/sagecal-0.8.5.tar.gz]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from astrostack import images, paths
from astrostack.errors import AstrostackError, InvalidInput, LocalCloudError

SAGECAL_IMAGE = "astrostack/sagecal:latest"
TOOLS_IMAGE = "astrostack/sagecal-tools:latest"
KIT = "/usr/share/astrostack/sagecal-selfcheck"  # in the sagecal image: SAGECal's 3C196 test files
MS_TOOL = "/usr/local/bin/ms_tool.py"  # in the tools image
SKY_MODEL = "3c196.sky.txt"
CLUSTER_FILE = "3c196.sky.txt.cluster"
RECIPE_FILES = ("Dockerfile", ".dockerignore", "fetch-sagecal.sh", "selfcheck")

Progress = Optional[Callable[[str], None]]


@dataclass
class Dataset:
    """What ``make_dataset`` wrote (``truth.json`` holds the same)."""

    folder: str
    ms: list[str]
    freqs_hz: list[float]
    stations: int
    times: int
    channels: int
    tile: int
    sigma_jy: float
    gains_seed: int
    sky_model: str = SKY_MODEL
    cluster_file: str = CLUSTER_FILE
    extra: dict = field(default_factory=dict)


def build_images(tarball: Optional[Path] = None, progress: Progress = None) -> tuple[str, str]:
    """Build astrostack/sagecal and its tools stage (from TARBALL, or what images/sagecal/sagecal-src holds
    or downloads); return both image ids. mpi-base and the Debian base are built first when missing."""
    images.ensure_base_image(progress)
    if not images.built_from_current_recipe("mpi-base"):
        images.build("mpi-base", progress)
    recipe = paths.images_dir() / "sagecal"
    with tempfile.TemporaryDirectory(prefix="sagecal-context-") as work:
        context = Path(work)
        for name in RECIPE_FILES:
            source = recipe / name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, context / name)
        (context / "sagecal-src").mkdir()
        if tarball is not None:
            if not Path(tarball).is_file():
                raise InvalidInput(f"no SAGECal source tarball at {tarball}")
            shutil.copy2(tarball, context / "sagecal-src" / Path(tarball).name)
        else:
            shutil.copytree(recipe / "sagecal-src", context / "sagecal-src", dirs_exist_ok=True)
        sagecal = images.build("sagecal", progress, context=context)
        tools = _build_target(context, TOOLS_IMAGE, "tools", progress)
    return sagecal, tools


def _build_target(context: Path, tag: str, target: str, progress: Progress) -> str:
    import docker

    client = docker.from_env()
    step = "(before the first step)"
    for chunk in client.api.build(path=str(context), tag=tag, target=target, rm=True, forcerm=True, decode=True):
        line = chunk.get("stream", "").rstrip("\n")
        step = line if line.startswith("Step ") else step
        if line and progress is not None:
            progress(line)
        if "error" in chunk:
            raise LocalCloudError(f"building {tag} failed at {step}: {' '.join(chunk['error'].split())}")
    return images.image_digest(tag)


def make_dataset(out: Path, *, ms_count: int, stations: int = 16, times: int = 20, channels: int = 2,
                 freq_start_hz: float = 120e6, freq_step_hz: float = 4e6, tile: int = 10, sigma_jy: float = 1.0,
                 gains_seed: int = 1, progress: Progress = None) -> Dataset:
    """N synthetic MS in OUT (obs000.MS ...), filled by SAGECal's simulation from the 3C196 sky model."""
    if ms_count < 1:
        raise InvalidInput("ms_count must be at least 1")
    _need_images()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = [f"obs{index:03d}.MS" for index in range(ms_count)]
    if any((out / name).exists() for name in names):
        raise InvalidInput(f"{out} holds MS already; give an empty folder")
    freqs = [freq_start_hz + index * freq_step_hz for index in range(ms_count)]
    tiles = -(-times // tile)
    _run(SAGECAL_IMAGE, f"cp {KIT}/{SKY_MODEL} {KIT}/{CLUSTER_FILE} /data/", out, progress)
    make = " && ".join(
        f"python3 {MS_TOOL} make /data/{name} --stations {stations} --times {times} --channels {channels} "
        f"--freq {freq:.1f}" for name, freq in zip(names, freqs))
    gains = (f"python3 {MS_TOOL} gains /data/gains.solutions --stations {stations} --tiles {tiles} "
             f"--cluster-file /data/{CLUSTER_FILE} --seed {gains_seed}")
    _run(TOOLS_IMAGE, f"{make} && {gains}", out, progress)
    model = f"-s /data/{SKY_MODEL} -c /data/{CLUSTER_FILE} -t {tile}"
    simulate = " && ".join(
        f"sagecal -d /data/{name} {model} -a 1 -O MODEL_DATA >/dev/null && "
        f"sagecal -d /data/{name} {model} -a 1 -p /data/gains.solutions -O DATA >/dev/null" for name in names)
    _run(SAGECAL_IMAGE, simulate, out, progress)
    noise = " && ".join(f"python3 {MS_TOOL} noise /data/{name} --sigma {sigma_jy} --seed {100 + index}"
                        for index, name in enumerate(names))
    _run(TOOLS_IMAGE, noise, out, progress)
    dataset = Dataset(str(out), names, freqs, stations, times, channels, tile, sigma_jy, gains_seed)
    (out / "truth.json").write_text(json.dumps(asdict(dataset), indent=2) + "\n")
    return dataset


def residuals(ms_dir: Path, solutions: Path, *, tile: int, progress: Progress = None) -> dict:
    """RMS (Jy) of DATA, of DATA - MODEL_DATA (unit gains) and of DATA - MODEL_SOLVED (SOLUTIONS applied),
    for the MS at MS_DIR; SAGECal writes MODEL_SOLVED. SOLUTIONS must be inside MS_DIR's folder."""
    _need_images()
    ms_dir, solutions = Path(ms_dir).resolve(), Path(solutions).resolve()
    folder = ms_dir.parent
    if solutions.parent != folder:
        raise InvalidInput(f"{solutions} is not beside {ms_dir}")
    sky, clusters = folder / SKY_MODEL, folder / CLUSTER_FILE
    if not sky.is_file() or not clusters.is_file():
        raise InvalidInput(f"{folder} has no {SKY_MODEL} and {CLUSTER_FILE}")
    _run(SAGECAL_IMAGE, f"sagecal -d /data/{ms_dir.name} -s /data/{SKY_MODEL} -c /data/{CLUSTER_FILE} -t {tile} "
         f"-a 1 -p /data/{solutions.name} -O MODEL_SOLVED >/dev/null", folder, progress)
    output = _run(TOOLS_IMAGE, f"python3 {MS_TOOL} compare /data/{ms_dir.name} --model MODEL_DATA "
                  "--model MODEL_SOLVED", folder, progress)
    return json.loads(output.strip().splitlines()[-1])


def _need_images() -> None:
    missing = [tag for tag in (SAGECAL_IMAGE, TOOLS_IMAGE) if not images.image_exists(tag)]
    if missing:
        raise LocalCloudError(f"no image {missing[0]} on this machine",
                              hint="build it: python -m astrostack.bench.sagecal_data --build-only --tarball TARBALL")


def _run(image: str, script: str, folder: Path, progress: Progress) -> str:
    """SCRIPT in a throw-away container of IMAGE with FOLDER at /data; its output, or an error with its tail."""
    import docker

    client = docker.from_env()
    container = client.containers.run(image, ["bash", "-c", script], entrypoint=[], detach=True,
                                      volumes={str(folder): {"bind": "/data", "mode": "rw"}})
    try:
        code = container.wait(timeout=1800).get("StatusCode", 1)
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    if progress is not None:
        for line in output.splitlines():
            progress(line)
    if code != 0:
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise AstrostackError(f"{image}: {script[:80]}... exited {code}: {tail}")
    return output


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m astrostack.bench.sagecal_data",
                                     description="Synthetic SAGECal MeasurementSets (3C196, known gains, noise).")
    parser.add_argument("out", nargs="?", type=Path, help="empty folder for the MS, sky model, cluster file")
    parser.add_argument("--ms", type=int, default=3, help="how many MS (one per worker at least)")
    parser.add_argument("--stations", type=int, default=16)
    parser.add_argument("--times", type=int, default=20, help="timeslots of 10 s")
    parser.add_argument("--tile", type=int, default=10, help="-t of the simulation (the known gains' interval)")
    parser.add_argument("--sigma", type=float, default=1.0, help="noise, Jy per real and imaginary part")
    parser.add_argument("--tarball", type=Path, help="SAGECal source tarball: build the images from it first")
    parser.add_argument("--build-only", action="store_true", help="only build the images")
    args = parser.parse_args(argv)
    try:
        if args.tarball or args.build_only:
            build_images(args.tarball, progress=print)
        if args.build_only:
            return 0
        if args.out is None:
            parser.error("give OUT, the folder to write")
        dataset = make_dataset(args.out, ms_count=args.ms, stations=args.stations, times=args.times,
                               tile=args.tile, sigma_jy=args.sigma)
    except AstrostackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {len(dataset.ms)} MS, {SKY_MODEL} and {CLUSTER_FILE} in {dataset.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
