"""The bench matrix: one YAML file -> a validated :class:`BenchMatrix`.

A matrix names a base cluster spec (a path, relative to the matrix file, or an
inline mapping), optional overrides merged into it, a job (a mapping passed to
the job runner), the (hosts, nodes) points to measure and how often to repeat
each. The whole matrix is validated when it is loaded (``bench run``, ``bench
schedule``, ``validate``): the job against the job schema (astrostack.job) and
against every point (no more ranks than the point has), and every point's
cluster spec, so a bad matrix fails before anything is deployed or scheduled.
A job's ``upload.local_dir`` (data copied onto each fresh cluster's share) is
relative to the matrix file.

Each point deploys a cluster named ``<matrix name>-<hosts>x<nodes>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from astrostack.errors import InvalidInput, quote, show_path
from astrostack.spec import ClusterSpec, describe_validation_error, spec_from_dict
from astrostack.yamlio import STDIN, read_yaml

# 20 chars leaves room for "-<hosts>x<nodes>" inside a 32-char cluster name.
MATRIX_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,18}[a-z0-9])?$")


class Point(BaseModel):
    """One cluster size of the matrix."""

    model_config = ConfigDict(extra="forbid")

    hosts: StrictInt = Field(ge=1, le=1000, description="VMs that run containers, manager included.")
    nodes: StrictInt = Field(ge=1, le=100000, description="MPI ranks (containers), master included.")

    @property
    def label(self) -> str:
        return f"{self.hosts}x{self.nodes}"


class BenchMatrix(BaseModel):
    """A benchmark like the paper's Table 1: points x repeats of deploy, job, destroy."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Matrix name: 1-20 chars of a-z, 0-9, '-'; names the clusters and the schedule.")
    spec: Union[str, dict[str, Any]] = Field(description="Base cluster spec: a path (relative to the matrix) or inline.")
    spec_overrides: dict[str, Any] = Field(default_factory=dict, description="Merged into the base spec, deeply.")
    job: dict[str, Any] = Field(description="The job (see `astrostack run`), validated with the matrix.")
    points: list[Point] = Field(min_length=1, description="The (hosts, nodes) to measure.")
    repeats: StrictInt = Field(default=1, ge=1, le=100, description="Deployments per point.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not MATRIX_NAME.fullmatch(value):
            raise ValueError(f"{quote(value)} must be 1-20 chars of a-z, 0-9 and '-', starting with a letter")
        return value

    @field_validator("job")
    @classmethod
    def _job(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("the job section is empty: say what to run (e.g. profile: mpi)")
        return value

    @model_validator(mode="after")
    def _distinct_points(self) -> BenchMatrix:
        labels = [point.label for point in self.points]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"points: {', '.join(duplicates)} listed twice; use repeats instead")
        return self

    def base_spec(self) -> dict[str, Any]:
        if not isinstance(self.spec, dict):
            raise InvalidInput(f"matrix {self.name}: spec {quote(self.spec)} was not resolved (use load_matrix)")
        return merged(self.spec, self.spec_overrides)

    def cluster_name(self, point: Point) -> str:
        return f"{self.name}-{point.label}"

    def point_spec(self, point: Point) -> ClusterSpec:
        data = merged(self.base_spec(), {"name": self.cluster_name(point), "hosts": point.hosts, "nodes": point.nodes})
        return spec_from_dict(data, source=f"matrix {self.name}, point {point.label}")


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in (mappings merge, anything else replaces)."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


# Loading ----------------------------------------------------------------------


def load_matrix(path: str | Path) -> BenchMatrix:
    """Read, resolve and validate a matrix file (``-``: standard input); :class:`InvalidInput` with one line."""
    if str(path) == STDIN:
        return matrix_from_dict(read_yaml(STDIN, "matrix"), source="<stdin>", base_dir=Path("."))
    path = Path(path)
    return matrix_from_dict(read_yaml(path, "matrix"), source=show_path(path), base_dir=path.parent)


def matrix_from_dict(data: Any, *, source: str = "<matrix>", base_dir: Path = Path(".")) -> BenchMatrix:
    """Validate ``data``, read a base spec given as a path, check every point's spec."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a matrix is a YAML mapping with name, spec, job and points")
    try:
        matrix = BenchMatrix.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"{source}: {describe_validation_error(exc)}") from None
    if isinstance(matrix.spec, str):
        spec_path = base_dir / matrix.spec
        spec_data = read_yaml(spec_path, "spec")
        if not isinstance(spec_data, dict):
            raise InvalidInput(f"{source}: spec: {show_path(spec_path)} is not a YAML mapping")
        matrix = matrix.model_copy(update={"spec": spec_data})
    matrix = matrix.model_copy(update={"job": resolve_upload(dict(matrix.job), base_dir)})
    job = check_job(matrix, source)
    for point in matrix.points:
        check_job_fits(job, matrix.point_spec(point), point, source)
    return matrix


def resolve_upload(job: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The job's ``upload.local_dir`` (data copied onto each fresh cluster), relative to the matrix file."""
    from astrostack.job import resolve_upload as resolve

    return resolve(job, base_dir)


def check_job(matrix: BenchMatrix, source: str) -> Any:
    """The matrix's job, validated by the job runner's own schema."""
    from astrostack.job import job_from_dict

    return job_from_dict(dict(matrix.job), source=f"{source}: job")


def check_job_fits(job: Any, spec: ClusterSpec, point: Point, source: str) -> None:
    """A job that asks for more ranks than a point has would fail every deployment of it."""
    ranks = spec.nodes * spec.application.slots_per_node
    wanted = getattr(job, "np", None) or ((job.workers + 1) if getattr(job, "workers", None) else None)
    if wanted is not None and wanted > ranks:
        asked = f"np {job.np}" if getattr(job, "np", None) else f"workers {job.workers} (+ 1 master)"
        raise InvalidInput(f"{source}: job: {asked} is more ranks than point {point.label} has ({ranks})")


