"""Jobs on a ready cluster: any command under mpirun (`mpi`), or SAGECal-MPI
with per-host data staging (`sagecal-mpi`).

Every job gets a folder on the share, `jobs/<id>/` (seen as /share/jobs/<id>
in the containers): job.json (what was asked and what happened), output.log,
and ranks/<rank>.json with each rank's host, exit code, wall and CPU seconds.
A job's exit code is the job's own.

SAGECal-MPI staging. The master asks one worker per UNIQUE hostname to
`glob()` the `-f` pattern on its own filesystem, and shares the MS found
there among the workers of that hostname. In Swarm mode every container has
its own hostname and all of them see the same share, so the same pattern
would make every MS be calibrated by several ranks at once. Before mpirun,
each worker container gets a private folder `/stage/<job>` holding symlinks
to ITS MS only (a distinct subset, assigned round-robin in hostfile order),
and the pattern given to sagecal-mpi is `/stage/<job>/*.MS`. A job that asks
for more workers than there are MS is refused: the master would exit anyway.
"""

from __future__ import annotations

import fnmatch
import io
import json
import shlex
import subprocess
import tarfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from astrostack import state
from astrostack.cluster import swarm
from astrostack.cluster.access import ManagerAccess, cluster_access
from astrostack.errors import InvalidInput, JobFailed, quote
from astrostack.spec import ClusterSpec, describe_validation_error, spec_from_dict

# The parameters the seed paper used (Table 1).
PAPER_SAGECAL_PARAMS = ["-A", "20", "-P", "2", "-r", "5", "-n", "16", "-t", "1", "-e", "3", "-g", "2",
                        "-l", "10", "-m", "7", "-x", "10", "-F", "1", "-j", "5"]
SHARE_IN_CONTAINER = "/share"
STAGE_ROOT = "/stage"


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Optional[str] = Field(default=None, description="Label of the job; default: the profile and a timestamp.")
    timeout_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)


class MpiJob(_Job):
    """Any command under mpirun across the cluster's nodes."""

    profile: Literal["mpi"] = "mpi"
    command: list[str] = Field(min_length=1, description="Program and arguments, run on every rank.")
    np: Optional[int] = Field(default=None, ge=1, description="Ranks; default: every node.")


class SagecalJob(_Job):
    """SAGECal-MPI on a set of MS on the share."""

    profile: Literal["sagecal-mpi"] = "sagecal-mpi"
    ms: str = Field(description="Glob of the MS, relative to the share, e.g. data/*.MS.")
    sky_model: str = Field(description="Sky model, relative to the share.")
    cluster_file: str = Field(description="Cluster file, relative to the share.")
    params: list[str] = Field(default_factory=lambda: list(PAPER_SAGECAL_PARAMS))
    workers: Optional[int] = Field(default=None, ge=1, description="Worker ranks; default: nodes - 1.")
    program: str = Field(default="sagecal-mpi", description="The MPI program (override for tests).")

    @field_validator("ms", "sky_model", "cluster_file")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/") or ".." in Path(value).parts:
            raise ValueError(f"{value!r} must be a path relative to the share, without '..'")
        return value


JobSpec = Union[MpiJob, SagecalJob]


def job_from_dict(data: dict[str, Any], source: str = "job") -> JobSpec:
    """Validate a job, with strict types as a spec's (no numbers as text, no booleans as numbers)."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a job is a mapping with a `profile`")
    profile = data.get("profile", "mpi")
    model = {"mpi": MpiJob, "sagecal-mpi": SagecalJob}.get(profile) if isinstance(profile, str) else None
    if model is None:
        raise InvalidInput(f"{source}: profile: {quote(profile)} is not one of mpi, sagecal-mpi")
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise InvalidInput(f"{source}: {describe_validation_error(exc)}") from None


class JobResult(BaseModel):
    id: str
    cluster: str
    profile: str
    exit_code: int
    started: datetime
    finished: datetime
    job_dir: str
    command: list[str]
    ranks: int
    output_tail: str = ""

    @property
    def seconds(self) -> float:
        return (self.finished - self.started).total_seconds()


# Running --------------------------------------------------------------------


def run_job(record: state.ClusterRecord, job: Union[JobSpec, dict[str, Any]], runtime: Any = None, *,
            access: Optional[ManagerAccess] = None, on_output: Optional[Callable[[bytes], None]] = None) -> JobResult:
    """Run JOB on the cluster of RECORD; the result carries the job's exit code.

    The job's output goes to ON_OUTPUT as it comes (and to output.log on the
    share); only its last 4000 bytes are kept in memory."""
    if isinstance(job, dict):
        job = job_from_dict(job)
    if record.status != "ready":
        raise InvalidInput(f"cluster {record.name} is {record.status}, not ready")
    spec = spec_from_dict(record.spec)
    if access is None:
        spec, access = cluster_access(record.name)
    job_id = f"{job.name or job.profile}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"
    plan = plan_job(spec, job, job_id, access)
    started = datetime.now(timezone.utc)
    tail = swarm.TailSink(then=on_output)
    exit_code = swarm.stream_in_master(spec, access, ["bash", "-c", plan.script], job.timeout_s, tail)
    finished = datetime.now(timezone.utc)
    outcome = JobResult(id=job_id, cluster=record.name, profile=job.profile, exit_code=exit_code,
                        started=started, finished=finished, job_dir=f"{spec.nfs.mount_point}/jobs/{job_id}",
                        command=plan.command, ranks=plan.ranks, output_tail=tail.text())
    _remember(record.name, outcome)
    return outcome


class Plan(BaseModel):
    command: list[str]
    ranks: int
    script: str


def plan_job(spec: ClusterSpec, job: JobSpec, job_id: str, access: ManagerAccess) -> Plan:
    hostfile = swarm.write_hostfile(spec, access)
    job_dir = f"{SHARE_IN_CONTAINER}/jobs/{job_id}"
    if isinstance(job, MpiJob):
        ranks = job.np or spec.nodes
        command = swarm.mpirun_argv(spec, [f"{job_dir}/rank-wrapper.sh", *job.command], np=ranks)
        return Plan(command=command, ranks=ranks, script=_job_script(job_dir, job, command, staging=""))
    workers = job.workers or spec.nodes - 1
    ms_list = list_ms(spec, job, access)
    assignment = assign_ms(hostfile, ms_list, workers)
    pattern = f"{STAGE_ROOT}/{job_id}/*.MS"
    program = [job.program, "-f", pattern, "-s", f"{SHARE_IN_CONTAINER}/{job.sky_model}",
               "-c", f"{SHARE_IN_CONTAINER}/{job.cluster_file}", *job.params]
    command = swarm.mpirun_argv(spec, [f"{job_dir}/rank-wrapper.sh", *program], np=workers + 1)
    stage = swarm.mpirun_argv(spec, [f"{job_dir}/stage.sh"], np=workers + 1)
    staging = _staging_files(job_dir, job_id, assignment) + " ".join(shlex.quote(a) for a in stage) + "\n"
    return Plan(command=command, ranks=workers + 1, script=_job_script(job_dir, job, command, staging))


def list_ms(spec: ClusterSpec, job: SagecalJob, access: ManagerAccess) -> list[str]:
    """The MS on the share matching the job's glob, as container paths."""
    host_glob = f"{spec.nfs.mount_point}/{job.ms}"
    result = access.run(f"shopt -s nullglob; for f in {host_glob}; do echo \"$f\"; done", timeout=60)
    found = sorted(line for line in result.output.splitlines() if fnmatch.fnmatch(line, host_glob))
    if not found:
        raise InvalidInput(f"job ms: no MS matches {job.ms!r} on the share of {spec.name}")
    return [SHARE_IN_CONTAINER + path[len(spec.nfs.mount_point):] for path in found]


def assign_ms(hostfile: list[str], ms_list: list[str], workers: int) -> dict[str, list[str]]:
    """Worker address -> its MS: distinct subsets, round-robin over the
    addresses of ranks 1..WORKERS in hostfile order (rank 0 is the master).
    In mpi mode several ranks share an address (one container per host):
    sagecal-mpi itself shares a host's MS among that host's workers."""
    if workers > len(ms_list):
        raise InvalidInput(f"job asks for {workers} workers but only {len(ms_list)} MS exist: "
                           "sagecal-mpi needs at least one MS per worker")
    rank_addresses = [line.split()[0] for line in hostfile for _ in range(_slots(line))]
    if len(rank_addresses) < workers + 1:
        raise InvalidInput(f"job asks for {workers} workers but the cluster has {len(rank_addresses) - 1}")
    worker_addresses = list(dict.fromkeys(rank_addresses[1:workers + 1]))
    assignment: dict[str, list[str]] = {address: [] for address in worker_addresses}
    for index, ms in enumerate(ms_list):
        assignment[worker_addresses[index % len(worker_addresses)]].append(ms)
    return assignment


def _slots(hostfile_line: str) -> int:
    for field_ in hostfile_line.split()[1:]:
        if field_.startswith("slots="):
            return int(field_.split("=", 1)[1])
    return 1


def _staging_files(job_dir: str, job_id: str, assignment: dict[str, list[str]]) -> str:
    """Shell that writes the assignment and the per-rank staging script."""
    lines = [f"{address} {ms}" for address, files in assignment.items() for ms in files]
    stage_script = f"""#!/bin/bash
# Link this container's MS (by its overlay address) into {STAGE_ROOT}/{job_id}.
set -eu
me=$(sed -n 's/.*"ip": *"\\([0-9.]*\\)".*/\\1/p' /etc/astrostack-node.json)
mkdir -p {STAGE_ROOT}/{job_id}
while read -r address ms; do
  if [ "$address" = "$me" ]; then ln -sfn "$ms" "{STAGE_ROOT}/{job_id}/$(basename "$ms")"; fi
done < {job_dir}/assignment.txt
"""
    return (
        f"cat > {job_dir}/assignment.txt <<'ASSIGN'\n" + "\n".join(lines) + "\nASSIGN\n"
        f"cat > {job_dir}/stage.sh <<'STAGE'\n{stage_script}STAGE\nchmod +x {job_dir}/stage.sh\n"
    )


RANK_WRAPPER = r"""#!/bin/bash
# Runs one rank and records its host, exit code, wall and CPU seconds.
dir=$(dirname "$0")/ranks
rank=${OMPI_COMM_WORLD_RANK:-0}
start=$(date +%s.%N)
"$@"
code=$?
end=$(date +%s.%N)
# `times` line 2: user and system CPU of this rank's children, as XmY.YYYs
# (written to a file: in a pipe or $(...) it would run in a fresh subshell).
times > "$dir/.$rank.times"
{ read -r _; read -r cpu_user cpu_sys; } < "$dir/.$rank.times"
rm -f "$dir/.$rank.times"
awk -v rank="$rank" -v host="${HOSTNAME:-unknown}" -v code="$code" -v start="$start" -v end="$end" \
    -v user="$cpu_user" -v sys="$cpu_sys" 'function s(t,  p) { split(t, p, "m"); return p[1] * 60 + p[2] }
  BEGIN { printf "{\"rank\": %d, \"host\": \"%s\", \"exit_code\": %d, \"wall_s\": %.3f, \"cpu_user_s\": %.3f, \"cpu_sys_s\": %.3f}\n",
          rank, host, code, end - start, s(user), s(sys) }' > "$dir/$rank.json"
exit $code
"""


def _job_script(job_dir: str, job: JobSpec, command: list[str], staging: str) -> str:
    spec_json = json.dumps(job.model_dump(mode="json"))
    quoted = " ".join(shlex.quote(part) for part in command)
    return (
        f"set -o pipefail\nmkdir -p {job_dir}/ranks\n"
        f"cat > {job_dir}/job.json <<'JOB'\n{spec_json}\nJOB\n"
        f"cat > {job_dir}/rank-wrapper.sh <<'WRAP'\n{RANK_WRAPPER}WRAP\nchmod +x {job_dir}/rank-wrapper.sh\n"
        f"{staging}"
        f"echo {shlex.quote(quoted)} > {job_dir}/command.txt\n"
        f"{quoted} 2>&1 | tee {job_dir}/output.log\n"
        f"code=$?\necho $code > {job_dir}/exit_code\nexit $code\n"
    )


# Records --------------------------------------------------------------------


def _remember(cluster: str, result: JobResult) -> None:
    with state.cluster_lock(cluster):
        record = state.load(cluster)
        record.jobs.append(json.loads(result.model_dump_json(exclude={"output_tail"})))
        state.save(record)


def list_jobs(cluster: str) -> list[dict[str, Any]]:
    return list(state.load(cluster).jobs)


def raise_for_exit(result: JobResult) -> None:
    if result.exit_code != 0:
        raise JobFailed(f"job {result.id} on {result.cluster} exited {result.exit_code}; logs in {result.job_dir}",
                        job_exit_code=result.exit_code)


def fetch(cluster: str, job_id: str, out_dir: Path) -> Path:
    """Copy a job's folder from the cluster's share into OUT_DIR/JOB_ID."""
    record = state.load(cluster)
    if job_id not in {job.get("id") for job in record.jobs}:
        raise InvalidInput(f"cluster {cluster} has no job {job_id!r} (see `astrostack jobs {cluster}`)")
    spec = spec_from_dict(record.spec)
    return _fetch_over_ssh(cluster, spec, job_id, Path(out_dir) / job_id)


def _fetch_over_ssh(cluster: str, spec: ClusterSpec, job_id: str, target: Path) -> Path:
    _, access = cluster_access(cluster)
    argv = access.interactive_argv() + [f"sudo tar -C {shlex.quote(spec.nfs.mount_point)}/jobs -cz {shlex.quote(job_id)}"]
    done = subprocess.run(argv, capture_output=True, timeout=3600)
    if done.returncode != 0:
        raise JobFailed(f"fetch of {job_id} from {cluster} failed: {done.stderr.decode(errors='replace').strip()[-200:]}",
                        job_exit_code=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout), mode="r:gz") as archive:
        archive.extractall(target.parent, filter="data")
    return target
