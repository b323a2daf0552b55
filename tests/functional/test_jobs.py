"""Jobs on a real local-cloud cluster: MPI across every node, SAGECal-MPI
staging (what each container sees), refusal of too many workers, a failing
job's exit code and logs, fetch, and a small bench matrix recorded end to end."""

from __future__ import annotations

import json
import shlex
import sqlite3
from pathlib import Path

import pytest
import yaml

from astrostack import job as jobs_lib
from astrostack import lifecycle, state
from astrostack.cli.main import main
from astrostack.cluster.access import host_access
from astrostack.errors import InvalidInput

pytestmark = pytest.mark.functional
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Share:
    """The cluster's share, as the manager mounts it (reached over SSH, as a user would)."""

    def __init__(self, cluster: str, mount_point: str):
        self.access = host_access(cluster, "manager")
        self.root = mount_point

    def run(self, script: str) -> str:
        result = self.access.run(script, timeout=120)
        assert result.ok, result.output
        return result.output

    def mkdirs(self, *paths: str) -> None:
        self.run("mkdir -p " + " ".join(shlex.quote(f"{self.root}/{p}") for p in paths))

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        target = shlex.quote(f"{self.root}/{path}")
        self.access.run(f"cat > {target} && chmod {mode} {target}", stdin=text, timeout=60)

    def read(self, path: str) -> str:
        return self.run(f"cat {shlex.quote(f'{self.root}/{path}')}")

    def json_files(self, folder: str) -> list[dict]:
        out = self.run(f"cat {shlex.quote(f'{self.root}/{folder}')}/*.json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cluster(test_project, app_image):
    from astrostack.spec import spec_from_dict

    data = yaml.safe_load((EXAMPLES / "local.yaml").read_text())
    data.update(name="ft-jobs", hosts=3, nodes=8)
    data["network"]["cidr"] = "10.96.0.0/24"
    data["timeouts"] = {"stack_create": 240, "hosts_ready": 240, "nodes_ready": 240, "delete": 240}
    record = lifecycle.up(spec_from_dict(data))
    try:
        yield record
    finally:
        lifecycle.down(record.name)


@pytest.fixture()
def share(cluster) -> Share:
    return Share(cluster.name, cluster.spec["nfs"]["mount_point"])


def test_mpi_job_runs_on_every_node(cluster, share):
    result = jobs_lib.run_job(state.load(cluster.name), {"profile": "mpi", "command": ["/usr/local/bin/mpi_smoke"]})
    assert result.exit_code == 0
    summary = json.loads([line for line in result.output_tail.splitlines() if line.startswith("{")][-1])
    assert summary["size"] == 8 and summary["ring_ok"] and summary["allreduce_ok"]
    assert len(set(summary["hosts"])) == 8
    ranks = share.json_files(f"jobs/{result.id}/ranks")
    assert sorted(r["rank"] for r in ranks) == list(range(8))
    assert all(r["exit_code"] == 0 and r["wall_s"] > 0 for r in ranks)
    assert [j["id"] for j in jobs_lib.list_jobs(cluster.name)][-1] == result.id


def test_sagecal_staging_gives_each_container_a_distinct_set(cluster, share):
    share.mkdirs(*(f"data/obs{index}.MS" for index in range(10)))
    share.write("probe.sh", '#!/bin/bash\nexec /usr/local/bin/mpi_file_probe "$2"\n', mode="0755")
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
    share.mkdirs("few/a.MS", "few/b.MS")
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
    folder = f"jobs/{failed['id']}"
    assert "from-rank-0" in share.read(f"{folder}/output.log")
    assert share.read(f"{folder}/exit_code").strip() == "7"
    assert main(["fetch", cluster.name, failed["id"], "-o", str(tmp_path)]) == 0
    assert (tmp_path / failed["id"] / "output.log").read_text() == share.read(f"{folder}/output.log")


def test_small_bench_matrix_records_every_column(test_project, app_image, tmp_path):
    matrix = {
        "name": "ft-bench",
        "spec": str(EXAMPLES / "local.yaml"),
        "spec_overrides": {"network": {"cidr": "10.97.0.0/24"},
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
