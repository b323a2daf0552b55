"""Job specs and the SAGECal-MPI staging plan (pure parts; the functional
tests run them on a real cluster)."""

from __future__ import annotations

import pytest

from astrostack.errors import InvalidInput
from astrostack.job import PAPER_SAGECAL_PARAMS, assign_ms, job_from_dict

SWARM_HOSTFILE = [f"10.0.9.{i} slots=1" for i in range(2, 14)]  # master + 11 workers


def test_every_worker_gets_a_distinct_nonempty_subset():
    ms = [f"/share/data/obs{i}.MS" for i in range(25)]
    assignment = assign_ms(SWARM_HOSTFILE, ms, workers=11)
    assert list(assignment) == [line.split()[0] for line in SWARM_HOSTFILE[1:12]]
    flat = [m for files in assignment.values() for m in files]
    assert sorted(flat) == sorted(ms) and len(flat) == len(set(flat))
    assert all(assignment.values())
    sizes = [len(files) for files in assignment.values()]
    assert max(sizes) - min(sizes) <= 1


def test_master_gets_no_ms():
    assignment = assign_ms(SWARM_HOSTFILE, ["a.MS", "b.MS", "c.MS"], workers=3)
    assert SWARM_HOSTFILE[0].split()[0] not in assignment


def test_more_workers_than_ms_is_refused():
    with pytest.raises(InvalidInput, match="5 workers but only 4 MS"):
        assign_ms(SWARM_HOSTFILE, ["a", "b", "c", "d"], workers=5)


def test_more_workers_than_ranks_is_refused():
    with pytest.raises(InvalidInput, match="12 workers but the cluster has 11"):
        assign_ms(SWARM_HOSTFILE, [f"{i}.MS" for i in range(20)], workers=12)


def test_mpi_mode_assigns_per_host():
    hostfile = ["10.1.0.3 slots=2", "10.1.0.4 slots=2"]
    assignment = assign_ms(hostfile, ["a", "b", "c", "d"], workers=3)
    assert assignment == {"10.1.0.3": ["a", "c"], "10.1.0.4": ["b", "d"]}


def test_sagecal_job_defaults_to_the_papers_parameters():
    job = job_from_dict({"profile": "sagecal-mpi", "ms": "data/*.MS", "sky_model": "s", "cluster_file": "c"})
    assert job.params == PAPER_SAGECAL_PARAMS
    assert " ".join(job.params) == "-A 20 -P 2 -r 5 -n 16 -t 1 -e 3 -g 2 -l 10 -m 7 -x 10 -F 1 -j 5"


@pytest.mark.parametrize("data, field", [
    ({"profile": "mpi"}, "command"),
    ({"profile": "mpi", "command": []}, "command"),
    ({"profile": "nope"}, "profile"),
    ({"profile": "sagecal-mpi", "ms": "/abs/*.MS", "sky_model": "s", "cluster_file": "c"}, "ms"),
    ({"profile": "sagecal-mpi", "ms": "../x/*.MS", "sky_model": "s", "cluster_file": "c"}, "ms"),
    ({"profile": "mpi", "command": ["x"], "np": 0}, "np"),
    ({"profile": "mpi", "command": ["x"], "extra": 1}, "extra"),
])
def test_bad_jobs_name_the_field_in_one_line(data, field):
    with pytest.raises(InvalidInput) as caught:
        job_from_dict(data)
    assert field in str(caught.value) and "\n" not in str(caught.value)
