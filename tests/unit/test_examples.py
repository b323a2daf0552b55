"""Every file in examples/ validates as what it is (spec, bench matrix or job),
through the same command a user runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astrostack.bench.matrix import load_matrix
from astrostack.cli.main import main
from astrostack.job import job_from_dict
from astrostack.spec import load_spec
from astrostack.yamlio import read_yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.y*ml"))


def kind(path: Path) -> str:
    data = read_yaml(path, "example")
    return "matrix" if "points" in data else "job" if "profile" in data else "spec"


def test_there_are_examples_of_specs_and_matrices():
    assert {kind(path) for path in FILES} >= {"spec", "matrix"}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_example_validates(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))
    found = kind(path)
    if found == "matrix":
        matrix = load_matrix(path)
        job_from_dict(matrix.job)
        assert all(matrix.point_spec(point) for point in matrix.points)
    elif found == "job":
        job_from_dict(read_yaml(path, "job"))
    else:
        load_spec(path)

    code = main(["validate", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["ok"] is True


def test_the_table1_matrix_has_a_job_the_job_schema_takes():
    job = job_from_dict(load_matrix(EXAMPLES / "bench-table1.yaml").job)
    assert job.profile == "sagecal-mpi" and job.params[:2] == ["-A", "20"]
