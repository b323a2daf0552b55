"""Real SAGECal-MPI on a real 3-host cluster of the local cloud, in Swarm mode
and in MPI mode: the image built from the vendored SAGECal source (the Docker
build cache makes a rebuild a few seconds), small synthetic MeasurementSets
made by SAGECal's own simulation mode (3C196 sky, known gains, noise; see
astrostack.bench.sagecal_data), uploaded onto the share by `astrostack run`
with the job file, calibrated with the job's default parameters, fetched.

What is checked is the calibration itself and where its output went: every MS
has exactly one solutions file in jobs/<id>/solutions/, opened by exactly one
rank (each MS has its own frequency, which the rank that opens it prints),
and those solutions, applied by SAGECal to the MS here, leave a residual far
below the uncalibrated one. A job that would crash SAGECal (-t below the
cluster file's chunks) is refused before mpirun, in one line, exit 2. `down`
leaves nothing.

Environment: ASTROSTACK_SAGECAL_TARBALL, the SAGECal source tarball (default:
../shared/vendor/sagecal-0.8.5.tar.gz beside the checkout).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import _unavailable, cloud_counts, machine_lock
from test_clusters import assert_nothing_left, one_error, run_cli

from astrostack import job as jobs_lib
from astrostack import lifecycle
from astrostack.bench import sagecal_data

pytestmark = pytest.mark.functional
REPO = Path(__file__).resolve().parents[2]
TARBALL = Path(os.environ.get("ASTROSTACK_SAGECAL_TARBALL", REPO.parent / "shared" / "vendor" / "sagecal-0.8.5.tar.gz"))
MS_COUNT = 4  # swarm 3x4: 3 workers (one calibrates 2 MS); mpi 3x5: 1, 2 and 1 workers on the hosts
RESIDUAL_DROP = 0.25  # calibrated residual / uncalibrated residual, at most (seen: 0.03 to 0.10)


@pytest.fixture(scope="module")
def sagecal_image(docker_client):
    """astrostack/sagecal and its tools stage, built from the vendored tarball (the build ends with
    sagecal-selfcheck: an image that cannot calibrate is never tagged)."""
    if not TARBALL.is_file():
        _unavailable(f"no SAGECal source tarball at {TARBALL} (ASTROSTACK_SAGECAL_TARBALL)")
    with machine_lock("images"):
        sagecal_data.build_images(TARBALL, progress=None)
    return sagecal_data.SAGECAL_IMAGE


@pytest.fixture(scope="module")
def dataset(sagecal_image, tmp_path_factory) -> sagecal_data.Dataset:
    """4 tiny MS (8 stations, 10 timeslots of 10 s, 2 channels), one solution interval of the
    job's default -t 10, noise of 1 Jy."""
    return sagecal_data.make_dataset(tmp_path_factory.mktemp("sagecal-data"), ms_count=MS_COUNT, stations=8,
                                     times=10, channels=2, tile=10, sigma_jy=1.0)


def job_file(folder: Path, dataset: sagecal_data.Dataset, **fields) -> Path:
    """A job as README shows it (the default parameters), with the data uploaded from here."""
    job = {"profile": "sagecal-mpi", "ms": "data/*.MS", "sky_model": f"data/{dataset.sky_model}",
           "cluster_file": f"data/{dataset.cluster_file}", "timeout_s": 900,
           "upload": {"local_dir": dataset.folder, "share_dir": "data"}, **fields}
    path = folder / f"job-{len(list(folder.glob('job-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def frequencies_opened(rank_log: str) -> list[int]:
    """The MHz of every MS a rank opened ("Freq: 124 MHz, Chan: 2 ..." per MS)."""
    return [round(float(mhz)) for mhz in re.findall(r"^Freq: ([0-9.]+) MHz", rank_log, re.M)]


@pytest.mark.parametrize("mode, cidr, nodes", [("swarm", "10.71.0.0/24", 4), ("mpi", "10.72.0.0/24", 5)])
def test_sagecal_mpi_calibrates_on_three_hosts(mode, cidr, nodes, clouds, make_spec, cluster_cleanup, dataset,
                                               capsys, tmp_path):
    before = cloud_counts(*clouds)
    spec = make_spec(f"ft-sagecal-{mode}", cidr, mode=mode, hosts=3, nodes=nodes,
                     application={"image": sagecal_data.SAGECAL_IMAGE})
    cluster_cleanup(spec.name)
    lifecycle.up(spec)

    # A tile smaller than the cluster file's 2 chunks: refused before mpirun, nothing recorded.
    code, _, err = run_cli(capsys, "run", spec.name, str(job_file(tmp_path, dataset, params=["-t", "1"])))
    assert code == 2
    assert "-t 1 is less than the 2 chunks of cluster -1" in one_error(err)
    assert jobs_lib.list_jobs(spec.name) == []

    code, out, err = run_cli(capsys, "run", spec.name, str(job_file(tmp_path, dataset)))
    assert code == 0, (out[-3000:], err)
    [job] = jobs_lib.list_jobs(spec.name)
    workers = nodes - 1
    assert job["ranks"] == nodes and job["threads"] == 1  # m1.small: 1 vCPU for every rank of a host
    assert "vCPU(s) of flavor m1.small" in job["threads_source"]
    assert job["params"][-2:] == ["-n", "1"]  # the -n chosen, recorded with the params as run

    fetched = tmp_path / "fetched"
    code, _, err = run_cli(capsys, "fetch", spec.name, job["id"], "-o", str(fetched))
    assert code == 0, err
    folder = fetched / job["id"]
    assert sorted(p.name for p in (folder / "solutions").iterdir()) == [f"{ms}.solutions" for ms in dataset.ms]
    assert (folder / "global.solutions").stat().st_size > 0
    assert (folder / "command.txt").read_text().startswith("mpirun ")

    opened = {rank: frequencies_opened((folder / "ranks" / f"{rank}.log").read_text()) for rank in range(nodes)}
    assert opened[0] == [], "the master opens no MS"
    every = sorted(mhz for rank in range(1, nodes) for mhz in opened[rank])
    assert every == [round(hz / 1e6) for hz in dataset.freqs_hz], f"each MS by exactly one rank: {opened}"
    assert all(opened[rank] for rank in range(1, workers + 1)), f"every worker calibrates: {opened}"

    # The solutions, applied by SAGECal here to a copy of the data, explain the sky down to the noise.
    check = tmp_path / "check"
    shutil.copytree(dataset.folder, check)
    for ms in dataset.ms:
        shutil.copy2(folder / "solutions" / f"{ms}.solutions", check / f"{ms}.solutions")
        rms = sagecal_data.residuals(check / ms, check / f"{ms}.solutions", tile=dataset.tile)["residual_rms"]
        print(f"{mode} {ms}: residual {rms['MODEL_DATA']:.2f} Jy uncalibrated, {rms['MODEL_SOLVED']:.2f} Jy "
              "calibrated")
        assert rms["MODEL_SOLVED"] < RESIDUAL_DROP * rms["MODEL_DATA"], (ms, rms)

    lifecycle.down(spec.name)
    assert_nothing_left(clouds, spec.name, before)
