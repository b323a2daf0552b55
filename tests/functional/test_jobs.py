"""Jobs on a real local-cloud cluster: MPI across every node, SAGECal-MPI
staging (what each container sees), refusal of too many workers, a failing
job's exit code and logs, fetch, and a small bench matrix recorded end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from astrostack import job as jobs_lib
from astrostack import lifecycle, state
from astrostack.cli.main import main
from astrostack.errors import InvalidInput
from astrostack.spec import spec_from_dict

pytestmark = pytest.mark.functional
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _spec(name: str, cidr: str, **overrides):
    data = yaml.safe_load((EXAMPLES / "local.yaml").read_text())
    data.update(name=name, network={"external": "local", "cidr": cidr})
    data["timeouts"] = {"stack_create": 180, "hosts_ready": 180, "nodes_ready": 240, "delete": 180}
    data.update(overrides)
    return spec_from_dict(data)


@pytest.fixture(scope="module")
def local_images(docker_client):
    """The VM and MPI images (built once; Docker's cache makes a rebuild cheap)."""
    from astrostack import images

    images.ensure_base_image()
    for name in ("vm", "mpi-base"):
        if not images.image_exists(f"astrostack/{name}:latest"):
            images.build(name)


@pytest.fixture(scope="module")
def cluster(heat_engine, local_images):
    spec = _spec("ft-jobs", "10.91.0.0/24", hosts=3, nodes=8)
    record = lifecycle.up(spec)
    try:
        yield record
    finally:
        lifecycle.down(spec.name)


@pytest.fixture()
def share(cluster) -> Path:
    from astrostack.local.cloud import share_dir

    return share_dir(cluster.name)


def _job_dir(share: Path, result) -> Path:
    return share / "jobs" / result.id


def test_mpi_job_runs_on_every_node(cluster, share):
    result = jobs_lib.run_job(state.load(cluster.name), {"profile": "mpi", "command": ["/usr/local/bin/mpi_smoke"]})
    assert result.exit_code == 0
    summary = json.loads([line for line in result.output_tail.splitlines() if line.startswith("{")][-1])
    assert summary["size"] == 8 and summary["ring_ok"] and summary["allreduce_ok"]
    assert len(set(summary["hosts"])) == 8
    ranks = [json.loads(p.read_text()) for p in sorted((_job_dir(share, result) / "ranks").glob("*.json"))]
    assert sorted(r["rank"] for r in ranks) == list(range(8))
    assert all(r["exit_code"] == 0 and r["wall_s"] > 0 for r in ranks)
    assert [j["id"] for j in jobs_lib.list_jobs(cluster.name)][-1] == result.id


def test_sagecal_staging_gives_each_container_a_distinct_set(cluster, share):
    data = share / "data"
    for index in range(10):
        (data / f"obs{index}.MS").mkdir(parents=True, exist_ok=True)
    (share / "probe.sh").write_text('#!/bin/bash\nexec /usr/local/bin/mpi_file_probe "$2"\n')
    (share / "probe.sh").chmod(0o755)
    job = {"profile": "sagecal-mpi", "ms": "data/*.MS", "sky_model": "data/sky.txt",
           "cluster_file": "data/sky.txt.cluster", "workers": 4, "program": "/share/probe.sh"}
    result = jobs_lib.run_job(state.load(cluster.name), job)
    assert result.exit_code == 0, result.output_tail
    seen = [json.loads(line) for line in result.output_tail.splitlines() if line.startswith('{"rank"')]
    by_rank = {row["rank"]: row for row in seen}
    assert set(by_rank) == {0, 1, 2, 3, 4}
    assert by_rank[0]["files"] == []  # the master calibrates nothing
    worker_sets = [{Path(f).name for f in by_rank[r]["files"]} for r in range(1, 5)]
    assert all(worker_sets), "every worker sees at least one MS"
    union = set().union(*worker_sets)
    assert union == {f"obs{i}.MS" for i in range(10)}
    assert sum(len(s) for s in worker_sets) == 10, "no MS is seen by two containers"
    assert len({by_rank[r]["host"] for r in range(1, 5)}) == 4


def test_too_many_workers_is_refused(cluster, share):
    (share / "few").mkdir(exist_ok=True)
    (share / "few" / "a.MS").mkdir(exist_ok=True)
    (share / "few" / "b.MS").mkdir(exist_ok=True)
    job = {"profile": "sagecal-mpi", "ms": "few/*.MS", "sky_model": "s", "cluster_file": "c", "workers": 3}
    before = len(jobs_lib.list_jobs(cluster.name))
    with pytest.raises(InvalidInput, match="3 workers but only 2 MS"):
        jobs_lib.run_job(state.load(cluster.name), job)
    assert len(jobs_lib.list_jobs(cluster.name)) == before


def test_failing_job_returns_its_exit_code_and_keeps_its_logs(cluster, share, capsys, tmp_path):
    code = main(["run", cluster.name, "--np", "3", "--", "bash", "-c", "echo from-rank-$OMPI_COMM_WORLD_RANK; exit 7"])
    assert code == 7
    failed = jobs_lib.list_jobs(cluster.name)[-1]
    assert failed["exit_code"] == 7
    folder = share / "jobs" / failed["id"]
    assert "from-rank-0" in (folder / "output.log").read_text()
    assert (folder / "exit_code").read_text().strip() == "7"
    assert main(["fetch", cluster.name, failed["id"], "-o", str(tmp_path)]) == 0
    assert (tmp_path / failed["id"] / "output.log").read_text() == (folder / "output.log").read_text()


def test_small_bench_matrix_records_every_column(heat_engine, local_images, tmp_path):
    matrix = {
        "name": "ft-bench",
        "spec": str(EXAMPLES / "local.yaml"),
        "spec_overrides": {"network": {"external": "local", "cidr": "10.92.0.0/24"},
                           "timeouts": {"stack_create": 180, "hosts_ready": 180, "nodes_ready": 240, "delete": 180}},
        "points": [{"hosts": 2, "nodes": 4}],
        "repeats": 1,
        "job": {"profile": "mpi", "command": ["/usr/local/bin/mpi_smoke"]},
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    db = tmp_path / "bench.sqlite"
    assert main(["bench", "run", str(path), "--db", str(db)]) == 0
    rows = sqlite3.connect(db).execute("SELECT * FROM points").fetchall()
    assert len(rows) == 1
    assert None not in rows[0]
    assert main(["bench", "report", "--db", str(db), "--format", "json", "--plots", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert not state.exists("ft-bench-2x4")
