"""Jobs on a ready cluster: any command under mpirun (`mpi`), or SAGECal-MPI
with per-host data staging and input checks (`sagecal-mpi`).

Every job gets a folder on the share, `jobs/<id>/` (seen as /share/jobs/<id>
in the containers), and every rank runs with that folder as its working
directory, so whatever a program writes to a relative path lands there:
job.json (what was asked, the plan and the threads chosen), command.txt,
output.log (all ranks), exit_code, and ranks/<rank>.json and <rank>.log with
each rank's host, address, exit code, wall and CPU seconds, and output. A
rank stopped by mpirun (SIGTERM when another rank fails) still writes its
figures. A job's exit code is the job's own.

SAGECal-MPI staging. The master asks one worker per UNIQUE hostname to
`glob()` the `-f` pattern on its own filesystem, and shares the MS found
there among the workers of that hostname. In Swarm mode every container has
its own hostname and all of them see the same share, so the same pattern
would make every MS be calibrated by several ranks at once. So each
container's MS (a distinct subset, assigned round-robin in hostfile order)
are linked in a folder of the job's own, `jobs/<id>/stage/<address>/`, and
each rank, before it starts, points its container's private `/stage/<id>` at
its folder; the pattern given to sagecal-mpi is `/stage/<id>/*`. A worker
writes its solutions next to the MS path it globbed (`X.MS.solutions`), so
they are written on the share, in the job's folder, and are gathered into
`jobs/<id>/solutions/` when mpirun ends (ok or not). The master's global
solutions go to `jobs/<id>/global.solutions` unless the job gives `-p`.

Before anything starts, the inputs are checked on the share (through the
manager), each failure one line and exit 2: the MS glob matches MeasurementSets
(directories with a table.dat) with distinct names, no more workers than MS,
the sky model and cluster file exist and parse, every source of the cluster
file is in the sky model, and the tile size `-t` is at least the largest
chunk count of the cluster file (SAGECal 0.8.5 divides by zero otherwise).

Threads per rank (`-n`): the job's `threads`, or `-n` in its params, or by
default the cores a rank really has: the vCPUs of the cluster's flavors (from
Nova, through the cluster's cloud) divided by the job's ranks on the busiest
host. The value and where it came from are recorded with the job.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import io
import json
import math
import re
import shlex
import subprocess
import tarfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from astrostack import state
from astrostack.cluster import swarm
from astrostack.cluster.access import ManagerAccess, cluster_access
from astrostack.errors import AstrostackError, CloudError, InvalidInput, JobFailed, quote, show_path
from astrostack.spec import ClusterSpec, Mode, describe_validation_error, spec_from_dict

# The parameters the seed paper printed (Table 1's command). With the 3C196
# cluster file (a cluster of 2 chunks) `-t 1` makes SAGECal 0.8.5 divide by
# zero, and `-n 16` was its servers' cores: kept for reference, not the default.
PAPER_SAGECAL_PARAMS = ["-A", "20", "-P", "2", "-r", "5", "-n", "16", "-t", "1", "-e", "3", "-g", "2",
                        "-l", "10", "-m", "7", "-x", "10", "-F", "1", "-j", "5"]
# The default: the paper's, with the tile size of SAGECal's own test scripts
# (test/Calibration/dosage*.sh: -t 10) and -n chosen per cluster (see above).
DEFAULT_SAGECAL_PARAMS = ["-A", "20", "-P", "2", "-r", "5", "-t", "10", "-e", "3", "-g", "2",
                          "-l", "10", "-m", "7", "-x", "10", "-F", "1", "-j", "5"]
SHARE_IN_CONTAINER = "/share"
STAGE_ROOT = "/stage"
SAGECAL_DEFAULT_TILE = 120  # sagecal-mpi's -t when none is given
SAGECAL_DEFAULT_FORMAT = 1  # its -F
SKY_MODEL_FIELDS = {0: 17, 1: 19}  # tokens per source line, by -F
OPTIONS_WITHOUT_VALUE = frozenset({"-V"})
OPTIONS_OF_THE_JOB = {"-f": "ms", "-s": "sky_model", "-c": "cluster_file", "-h": "(help, not a job)"}
INPUT_LIMIT = 32 * 1024 * 1024  # sky model and cluster file read for checking
# Characters a share glob may hold (it is expanded by the shell on the manager).
MS_GLOB = re.compile(r"[A-Za-z0-9._/*?\[\]!+=,@%-]+")


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Optional[str] = Field(default=None, description="Label of the job; default: the profile and a timestamp.")
    timeout_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)


class MpiJob(_Job):
    """Any command under mpirun across the cluster's nodes."""

    profile: Literal["mpi"] = "mpi"
    command: list[str] = Field(min_length=1, description="Program and arguments, run on every rank.")
    np: Optional[int] = Field(default=None, ge=1, description="Ranks; default: every node.")


class Upload(BaseModel):
    """A folder of this machine copied onto the share before the job (a fresh cluster has none of the data)."""

    model_config = ConfigDict(extra="forbid")

    local_dir: str = Field(min_length=1, description="Folder here (relative: to the job or matrix file).")
    share_dir: str = Field(min_length=1, description="Folder on the share it is copied into, e.g. data.")

    @field_validator("share_dir")
    @classmethod
    def _relative(cls, value: str) -> str:
        return relative_share_path(value)


class SagecalJob(_Job):
    """SAGECal-MPI on a set of MS on the share."""

    profile: Literal["sagecal-mpi"] = "sagecal-mpi"
    ms: str = Field(description="Glob of the MS, relative to the share, e.g. data/*.MS.")
    sky_model: str = Field(description="Sky model, relative to the share.")
    cluster_file: str = Field(description="Cluster file, relative to the share.")
    params: list[str] = Field(default_factory=lambda: list(DEFAULT_SAGECAL_PARAMS),
                              description="sagecal-mpi options but -f, -s and -c (from ms, sky_model, cluster_file).")
    workers: Optional[int] = Field(default=None, ge=1, description="Worker ranks; default: nodes - 1.")
    threads: Optional[int] = Field(default=None, ge=1, le=1024,
                                   description="Threads per rank (-n); default: vCPUs / ranks per host.")
    upload: Optional[Upload] = Field(default=None, description="Data copied onto the share first.")
    program: str = Field(default="sagecal-mpi", description="The MPI program (override for tests).")

    @field_validator("ms", "sky_model", "cluster_file")
    @classmethod
    def _relative(cls, value: str) -> str:
        return relative_share_path(value)

    @field_validator("ms")
    @classmethod
    def _glob(cls, value: str) -> str:
        if not MS_GLOB.fullmatch(value):
            raise ValueError(f"{quote(value)} may hold only letters, digits and . _ - / * ? [ ] ! + = , @ %")
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: list[str]) -> list[str]:
        options = sagecal_options(value)
        for flag, field_name in OPTIONS_OF_THE_JOB.items():
            if flag in options:
                raise ValueError(f"{flag} is set by the job's {field_name}, not in params")
        for flag in ("-t", "-n"):
            if flag in options and not (options[flag].isdigit() and int(options[flag]) >= 1):
                raise ValueError(f"{flag} {quote(options[flag])} is not a positive whole number")
        if options.get("-F", "1") not in ("0", "1"):
            raise ValueError(f"-F {quote(options['-F'])} is not a sky model format (0 or 1)")
        return value

    @model_validator(mode="after")
    def _threads_once(self) -> SagecalJob:
        if self.threads is not None and "-n" in sagecal_options(self.params):
            raise ValueError("threads and -n in params both set the threads per rank: give one")
        return self

    @property
    def options(self) -> dict[str, str]:
        return sagecal_options(self.params)

    @property
    def runs_sagecal(self) -> bool:
        """SAGECal's input checks apply to SAGECal (a test stand-in gets only the staging checks)."""
        return PurePosixPath(self.program).name.startswith("sagecal-mpi")


JobSpec = Union[MpiJob, SagecalJob]


def relative_share_path(value: str) -> str:
    """VALUE if it is a path relative to the share without '..' (a job's inputs), else ValueError."""
    if value.startswith("/") or ".." in PurePosixPath(value).parts:
        raise ValueError(f"{quote(value)} must be a path relative to the share, without '..'")
    return value


def sagecal_options(params: list[str]) -> dict[str, str]:
    """``-X VALUE`` pairs (and the flags without value, e.g. -V) of sagecal-mpi params; ValueError if malformed."""
    options: dict[str, str] = {}
    index = 0
    while index < len(params):
        flag = params[index]
        if not re.fullmatch(r"-[A-Za-z]", flag):
            raise ValueError(f"{quote(flag)} is not an option (params are -X VALUE pairs, e.g. -t 10)")
        if flag in OPTIONS_WITHOUT_VALUE:
            options[flag] = ""
            index += 1
            continue
        if index + 1 >= len(params):
            raise ValueError(f"{flag} has no value")
        options[flag] = params[index + 1]
        index += 2
    return options


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


def resolve_upload(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """DATA with a relative ``upload.local_dir`` made absolute against BASE_DIR (the job or matrix file's folder)."""
    upload = data.get("upload")
    if not isinstance(upload, dict) or not isinstance(upload.get("local_dir"), str):
        return data
    local = Path(upload["local_dir"]).expanduser()
    return {**data, "upload": {**upload, "local_dir": str(local if local.is_absolute() else base_dir / local)}}


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
    threads: Optional[int] = None
    threads_source: str = ""
    params: list[str] = Field(default_factory=list)  # sagecal-mpi: its params as run (with -n); mpi: the arguments
    output_tail: str = ""

    @property
    def seconds(self) -> float:
        return (self.finished - self.started).total_seconds()


# Running --------------------------------------------------------------------


def run_job(record: state.ClusterRecord, job: Union[JobSpec, dict[str, Any]], runtime: Any = None, *,
            access: Optional[ManagerAccess] = None, on_output: Optional[Callable[[bytes], None]] = None) -> JobResult:
    """Run JOB on the cluster of RECORD; the result carries the job's exit code.

    RUNTIME (a lifecycle.Runtime) gives the cloud connection used to learn the
    flavors' vCPUs. The job's output goes to ON_OUTPUT as it comes (and to
    output.log on the share); only its last 4000 bytes are kept in memory.
    Its inputs are checked first: a bad one raises InvalidInput and nothing runs."""
    if isinstance(job, dict):
        job = job_from_dict(job)
    if record.status != "ready":
        raise InvalidInput(f"cluster {record.name} is {record.status}, not ready")
    spec = spec_from_dict(record.spec)
    if access is None:
        spec, access = cluster_access(record.name)
    job_id = f"{job.name or job.profile}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"
    if isinstance(job, SagecalJob) and job.upload is not None:
        upload_to_share(spec, access, job.upload)
    connect = getattr(runtime, "connect", None)
    plan = plan_job(spec, job, job_id, access, connect=connect)
    started = datetime.now(timezone.utc)
    tail = swarm.TailSink(then=on_output)
    exit_code = swarm.stream_in_master(spec, access, ["bash", "-c", plan.script], job.timeout_s, tail)
    finished = datetime.now(timezone.utc)
    outcome = JobResult(id=job_id, cluster=record.name, profile=job.profile, exit_code=exit_code,
                        started=started, finished=finished, job_dir=f"{spec.nfs.mount_point}/jobs/{job_id}",
                        command=plan.command, ranks=plan.ranks, threads=plan.threads,
                        threads_source=plan.threads_source, params=plan.params, output_tail=tail.text())
    record_job(record.name, outcome)
    return outcome


class Plan(BaseModel):
    command: list[str]
    ranks: int
    script: str
    threads: Optional[int] = None
    threads_source: str = ""
    params: list[str] = Field(default_factory=list)
    assignment: dict[str, list[str]] = Field(default_factory=dict)


def plan_job(spec: ClusterSpec, job: JobSpec, job_id: str, access: ManagerAccess, *,
             connect: Optional[Callable[[str], Any]] = None) -> Plan:
    """What to run and the script that runs it; for sagecal-mpi the inputs are checked first (InvalidInput)."""
    job_dir = f"{SHARE_IN_CONTAINER}/jobs/{job_id}"
    if isinstance(job, MpiJob):
        swarm.write_hostfile(spec, access)
        ranks = job.np or spec.nodes
        command = swarm.mpirun_argv(spec, [f"{job_dir}/rank-wrapper.sh", *job.command], np=ranks)
        record = {"job": job.model_dump(mode="json"), "command": command, "ranks": ranks}
        return Plan(command=command, ranks=ranks, script=_job_script(job_dir, record, command),
                    params=list(job.command[1:]))
    workers = job.workers or spec.nodes - 1
    ms_list = check_sagecal_inputs(job, inspect_share(spec, job, access), workers, spec.name)
    hostfile = swarm.write_hostfile(spec, access)
    assignment = assign_ms(hostfile, ms_list, workers)
    ranks = workers + 1
    threads, source = choose_threads(spec, job, rank_hosts(spec, hostfile, ranks, access), connect)
    program = [job.program, "-f", f"{STAGE_ROOT}/{job_id}/*", "-s", f"{SHARE_IN_CONTAINER}/{job.sky_model}",
               "-c", f"{SHARE_IN_CONTAINER}/{job.cluster_file}", *run_params(job, threads, job_dir)]
    command = swarm.mpirun_argv(spec, [f"{job_dir}/rank-wrapper.sh", *program], np=ranks)
    record = {"job": job.model_dump(mode="json"), "command": command, "ranks": ranks,
              "threads": {"per_rank": threads, "source": source}, "assignment": assignment}
    script = _job_script(job_dir, record, command, setup=_stage_script(job_dir, assignment),
                         finish=_gather_solutions_script(job_dir))
    asked = list(job.params) + ([] if "-n" in job.options else ["-n", str(threads)])
    return Plan(command=command, ranks=ranks, script=script, threads=threads, threads_source=source,
                params=asked, assignment=assignment)


def run_params(job: SagecalJob, threads: int, job_dir: str) -> list[str]:
    """The job's params, with -n (threads per rank) and the master's -p (in the job folder) unless given."""
    params = list(job.params)
    if "-n" not in job.options:
        params += ["-n", str(threads)]
    if "-p" not in job.options:
        params += ["-p", f"{job_dir}/global.solutions"]
    return params


# Input checks (on the share, before anything starts) -------------------------


@dataclass(frozen=True)
class ShareInputs:
    """What the share holds for a sagecal-mpi job: the glob's matches (relative
    to the share, and whether each is a MeasurementSet), the texts of the sky
    model and cluster file (None: missing or unreadable)."""

    matches: list[tuple[str, bool]]
    sky_model: Optional[str]
    cluster_file: Optional[str]


@dataclass(frozen=True)
class ClusterEntry:
    id: int
    chunks: int
    sources: tuple[str, ...]
    line: int


def inspect_share(spec: ClusterSpec, job: SagecalJob, access: ManagerAccess) -> ShareInputs:
    """One SSH call to the manager: the MS glob's matches and the two model files (bounded)."""
    root = spec.nfs.mount_point
    files = " ".join(shlex.quote(f"{root}/{path}") for path in (job.sky_model, job.cluster_file))
    script = (
        f"shopt -s nullglob; cd {shlex.quote(root)} || exit 3\n"
        f'for f in {job.ms}; do [ -e "$f" ] || continue; '
        f'if [ -f "$f/table.dat" ]; then echo "ms $f"; else echo "other $f"; fi; done\n'
        f'for f in {files}; do if [ -f "$f" ] && [ -r "$f" ]; then '
        f'echo "file $(head -c {INPUT_LIMIT + 1} "$f" | base64 -w0)"; else echo missing; fi; done\n'
    )
    result = access.run(script, timeout=120)
    if result.exit_code != 0:
        raise JobFailed(f"cannot look at the share of {spec.name}: {result.output.strip()[-200:]}", job_exit_code=1)
    return parse_share_inputs(result.output, job)


def parse_share_inputs(output: str, job: SagecalJob) -> ShareInputs:
    matches: list[tuple[str, bool]] = []
    texts: list[Optional[str]] = []
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        if kind in ("ms", "other") and fnmatch.fnmatchcase(rest, job.ms):
            matches.append((rest, kind == "ms"))
        elif kind == "file":
            texts.append(_decoded(rest, job))
        elif kind == "missing":
            texts.append(None)
    if len(texts) != 2:
        raise JobFailed(f"unexpected answer from the share: {output.strip()[-200:]}", job_exit_code=1)
    return ShareInputs(sorted(matches), texts[0], texts[1])


def _decoded(b64: str, job: SagecalJob) -> str:
    try:
        raw = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise JobFailed("unexpected answer from the share (not base64)", job_exit_code=1) from None
    if len(raw) > INPUT_LIMIT:
        raise InvalidInput(f"job: {job.sky_model} or {job.cluster_file} is over {INPUT_LIMIT >> 20} MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def check_sagecal_inputs(job: SagecalJob, inputs: ShareInputs, workers: int, cluster: str) -> list[str]:
    """The MS to calibrate (container paths) if the inputs would run; else InvalidInput naming the first problem."""
    ms_list = check_ms(job, inputs.matches, workers, cluster)
    if job.runs_sagecal:
        options = job.options
        sources = parse_sky_model(_present(inputs.sky_model, "sky_model", job.sky_model, cluster),
                                  int(options.get("-F", SAGECAL_DEFAULT_FORMAT)), job.sky_model)
        clusters = parse_cluster_file(_present(inputs.cluster_file, "cluster_file", job.cluster_file, cluster),
                                      job.cluster_file)
        check_cluster_sources(clusters, sources, job.cluster_file, job.sky_model)
        check_tile_size(int(options.get("-t", SAGECAL_DEFAULT_TILE)), clusters, job.cluster_file)
    return ms_list


def _present(text: Optional[str], field_name: str, path: str, cluster: str) -> str:
    if text is None:
        raise InvalidInput(f"job {field_name}: {path} is not a readable file on the share of {cluster}")
    return text


def check_ms(job: SagecalJob, matches: list[tuple[str, bool]], workers: int, cluster: str) -> list[str]:
    if not matches:
        raise InvalidInput(f"job ms: no MS matches {job.ms!r} on the share of {cluster}")
    if workers > len(matches):
        raise InvalidInput(f"job asks for {workers} workers but only {len(matches)} MS exist: "
                           "sagecal-mpi needs at least one MS per worker")
    not_ms = [path for path, is_ms in matches if not is_ms]
    if job.runs_sagecal and not_ms:
        more = f" ({len(not_ms) - 1} more)" if len(not_ms) > 1 else ""
        raise InvalidInput(f"job ms: {quote(not_ms[0])} matches {job.ms!r} but is not a MeasurementSet "
                           f"(a directory with a table.dat){more}")
    names = Counter(PurePosixPath(path).name for path, _ in matches)
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:
        same = [path for path, _ in matches if PurePosixPath(path).name == twice[0]]
        raise InvalidInput(f"job ms: {len(same)} MS are named {twice[0]} ({', '.join(same[:2])}): "
                           "each MS's solutions are named after it, so the names must differ")
    return [f"{SHARE_IN_CONTAINER}/{path}" for path, _ in matches]


def parse_sky_model(text: str, fmt: int, name: str) -> set[str]:
    """Source names of an LSM sky model (-F 0: 17 fields a line, -F 1: 19), as SAGECal reads it."""
    expected = SKY_MODEL_FIELDS[fmt]
    sources: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or line.startswith("#"):
            continue
        where = f"sky_model {name} line {number}"
        if len(fields) != expected:
            raise InvalidInput(f"{where}: {len(fields)} fields, but a -F {fmt} sky model has {expected} "
                               "(name, RA h m s, Dec d m s, I Q U V, spectral index, RM, extent X Y, angle, freq0)")
        bad = next((value for value in fields[1:] if not _is_number(value)), None)
        if bad is not None:
            raise InvalidInput(f"{where}: {quote(bad)} is not a number")
        if float(fields[-1]) <= 0:
            raise InvalidInput(f"{where}: the reference frequency {fields[-1]} must be positive")
        if fields[0] in sources:
            raise InvalidInput(f"{where}: source {quote(fields[0])} is there twice")
        sources.add(fields[0])
    if not sources:
        raise InvalidInput(f"sky_model {name}: no sources")
    return sources


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def parse_cluster_file(text: str, name: str) -> list[ClusterEntry]:
    """Clusters of a SAGECal cluster file: `id chunks source...` a line."""
    clusters: list[ClusterEntry] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or line.startswith("#"):
            continue
        where = f"cluster_file {name} line {number}"
        if len(fields) < 3:
            raise InvalidInput(f"{where}: a cluster is `id chunks source...`, not {quote(line.strip())}")
        if not re.fullmatch(r"-?\d+", fields[0]):
            raise InvalidInput(f"{where}: cluster id {quote(fields[0])} is not a whole number")
        if not fields[1].isdigit() or int(fields[1]) < 1:
            raise InvalidInput(f"{where}: chunks {quote(fields[1])} is not a whole number of at least 1")
        clusters.append(ClusterEntry(int(fields[0]), int(fields[1]), tuple(fields[2:]), number))
    if not clusters:
        raise InvalidInput(f"cluster_file {name}: no clusters")
    return clusters


def check_cluster_sources(clusters: list[ClusterEntry], sources: set[str], cluster_file: str, sky_model: str) -> None:
    for cluster in clusters:
        missing = [source for source in cluster.sources if source not in sources]
        if missing:
            raise InvalidInput(f"cluster_file {cluster_file} line {cluster.line}: cluster {cluster.id} names "
                               f"{quote(missing[0])}, which sky_model {sky_model} does not have")


def check_tile_size(tile: int, clusters: list[ClusterEntry], cluster_file: str) -> None:
    """SAGECal 0.8.5 splits each tile of -t timeslots into a cluster's chunks: fewer
    timeslots than chunks is an integer division by zero in every worker."""
    widest = max(clusters, key=lambda cluster: cluster.chunks)
    if tile < widest.chunks:
        raise InvalidInput(f"params: -t {tile} is less than the {widest.chunks} chunks of cluster {widest.id} "
                           f"({cluster_file} line {widest.line}): SAGECal 0.8.5 divides by zero then; "
                           f"use -t {widest.chunks} or more")


def upload_to_share(spec: ClusterSpec, access: ManagerAccess, upload: Upload) -> None:
    """Copy UPLOAD's local folder into the share (tar over SSH through the manager)."""
    local = Path(upload.local_dir)
    if not local.is_dir():
        raise InvalidInput(f"job upload.local_dir: {show_path(local)} is not a folder")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=1) as tar:
        for entry in sorted(local.iterdir()):
            tar.add(str(entry), arcname=entry.name)
    target = shlex.quote(f"{spec.nfs.mount_point}/{upload.share_dir}")
    argv = access.interactive_argv() + [f"sudo mkdir -p {target} && sudo tar -C {target} -xzf -"]
    done = subprocess.run(argv, input=archive.getvalue(), capture_output=True, timeout=3600)
    if done.returncode != 0:
        raise JobFailed(f"upload of {show_path(local)} to {spec.name}:{upload.share_dir} failed: "
                        f"{done.stderr.decode(errors='replace').strip()[-200:]}", job_exit_code=1)


# Threads per rank ------------------------------------------------------------


def choose_threads(spec: ClusterSpec, job: SagecalJob, hosts_of_ranks: list[str],
                   connect: Optional[Callable[[str], Any]]) -> tuple[int, str]:
    """(threads per rank, where the number came from)."""
    if "-n" in job.options:
        return int(job.options["-n"]), "params -n"
    if job.threads is not None:
        return job.threads, "the job's threads"
    vcpus, flavors = flavor_vcpus(spec, connect)
    busiest = max(Counter(hosts_of_ranks).values())
    return max(1, vcpus // busiest), f"{vcpus} vCPU(s) of flavor {flavors} / {busiest} ranks on the busiest host"


def flavor_vcpus(spec: ClusterSpec, connect: Optional[Callable[[str], Any]] = None) -> tuple[int, str]:
    """The fewest vCPUs among the flavors of the hosts that run ranks (manager, workers), from Nova."""
    from astrostack import cloud
    from astrostack.retry import SDK_ERRORS

    names = sorted({spec.servers.manager.flavor, spec.servers.worker.flavor})
    hint = "give the job `threads: N` (astrostack run --threads N)"
    try:
        conn = (connect or cloud.connect)(spec.cloud)
        vcpus = {name: int(conn.compute.find_flavor(name, ignore_missing=False).vcpus) for name in names}
    except SDK_ERRORS as exc:
        raise CloudError(f"cannot learn the vCPUs of flavor {'/'.join(names)} from cloud {spec.cloud}: "
                         f"{' '.join(str(exc).split())[:200]}", hint=hint) from None
    except AstrostackError as exc:
        raise CloudError(f"cannot learn the vCPUs of flavor {'/'.join(names)}: {exc.message}", hint=hint) from None
    fewest = min(vcpus, key=lambda name: vcpus[name])
    return vcpus[fewest], fewest


def rank_hosts(spec: ClusterSpec, hostfile: list[str], ranks: int, access: ManagerAccess) -> list[str]:
    """The host (VM) of each of the job's RANKS, by mpirun's by-slot placement over the hostfile."""
    addresses = [line.split()[0] for line in hostfile for _ in range(_slots(line))][:ranks]
    if spec.mode is Mode.mpi:
        return addresses  # one container per host, on the host's network
    placement = swarm_task_hosts(access.run(swarm.task_addresses_script(spec), timeout=60).output)
    if not all(address in placement for address in addresses):
        # Unknown placement: Swarm spreads a service's tasks evenly over the hosts.
        per_host = math.ceil(len(addresses) / spec.hosts)
        return [f"host-{index // per_host}" for index in range(len(addresses))]
    return [placement[address] for address in addresses]


def swarm_task_hosts(inspect_json: str) -> dict[str, str]:
    """Container (task) address -> its host's address, from `docker network inspect --verbose`'s Services."""
    try:
        services = json.loads(inspect_json.strip() or "{}") or {}
    except ValueError:
        return {}
    placement = {}
    for service in services.values():
        for task in (service or {}).get("Tasks") or []:
            host = (task.get("Info") or {}).get("Host IP")
            if task.get("EndpointIP") and host:
                placement[task["EndpointIP"]] = host
    return placement


# Staging ------------------------------------------------------------------------


def assign_ms(hostfile: list[str], ms_list: list[str], workers: int) -> dict[str, list[str]]:
    """Worker address -> its MS: distinct subsets, dealt round-robin over the
    addresses of ranks 1..WORKERS in hostfile order (rank 0 is the master).

    In mpi mode several ranks share an address (one container per host), and
    sagecal-mpi itself splits a host's MS among that host's workers, in blocks
    of ceil(MS / workers): 4 MS for 3 workers is 2, 2 and 0, and SAGECal 0.8.5
    then waits forever for the worker left without one. So each host gets a
    number of MS that leaves none of its workers idle (:func:`host_shares`)."""
    if workers > len(ms_list):
        raise InvalidInput(f"job asks for {workers} workers but only {len(ms_list)} MS exist: "
                           "sagecal-mpi needs at least one MS per worker")
    rank_addresses = [line.split()[0] for line in hostfile for _ in range(_slots(line))]
    if len(rank_addresses) < workers + 1:
        raise InvalidInput(f"job asks for {workers} workers but the cluster has {len(rank_addresses) - 1}")
    per_host = Counter(rank_addresses[1:workers + 1])
    addresses = list(dict.fromkeys(rank_addresses[1:workers + 1]))
    shares = host_shares([per_host[address] for address in addresses], len(ms_list))
    if shares is None:
        raise InvalidInput(_no_idle_free_split(addresses, per_host, len(ms_list), workers))
    quota = dict(zip(addresses, shares))
    assignment: dict[str, list[str]] = {address: [] for address in addresses}
    pending = list(ms_list)
    while pending:
        for address in addresses:
            if pending and len(assignment[address]) < quota[address]:
                assignment[address].append(pending.pop(0))
    return assignment


def host_shares(workers_per_host: list[int], total: int) -> Optional[list[int]]:
    """MS per host, TOTAL in all, about even per worker, such that sagecal-mpi's split of
    m MS among a host's n workers (blocks of ceil(m/n)) leaves none of them without one;
    None if there is no such split (with at most 3 MS more per worker than the even share)."""
    all_workers = sum(workers_per_host)
    if total < all_workers:
        return None
    if all(n == 1 for n in workers_per_host):  # Swarm mode: every container is a host
        base, rest = divmod(total, all_workers)
        return [base + (1 if index < rest else 0) for index in range(len(workers_per_host))]
    even = -(-total // all_workers)
    for ceiling in range(even, even + 4):
        options = [[m for m in range(n, n * ceiling + 1) if no_idle_worker(m, n)] for n in workers_per_host]
        shares = _shares_summing_to(options, workers_per_host, total)
        if shares is not None:
            return shares
    return None


def no_idle_worker(ms: int, workers: int) -> bool:
    """sagecal-mpi gives a host's workers blocks of ceil(ms / workers) MS: does the last one get any?"""
    return ms >= (workers - 1) * -(-ms // workers) + 1


def _shares_summing_to(options: list[list[int]], workers_per_host: list[int], total: int) -> Optional[list[int]]:
    """One of each host's OPTIONS, summing to TOTAL, with the least squared distance to the even
    share per worker (dynamic programming over the hosts); None if no choice sums to TOTAL."""
    per_worker = total / sum(workers_per_host)
    layers: list[dict[int, tuple[float, int, int]]] = []
    reach: dict[int, float] = {0: 0.0}
    for choices, workers in zip(options, workers_per_host):
        step: dict[int, tuple[float, int, int]] = {}
        for partial, cost in reach.items():
            for value in choices:
                reached, spent = partial + value, cost + (value / workers - per_worker) ** 2 * workers
                if reached <= total and (reached not in step or spent < step[reached][0]):
                    step[reached] = (spent, partial, value)
        layers.append(step)
        reach = {reached: entry[0] for reached, entry in step.items()}
    if total not in reach:
        return None
    shares, cursor = [], total
    for step in reversed(layers):
        _, cursor, value = step[cursor]
        shares.append(value)
    return shares[::-1]


def _no_idle_free_split(addresses: list[str], per_host: Counter, total: int, workers: int) -> str:
    counts = [per_host[address] for address in addresses]
    near = [m for m in range(max(workers, total - 3 * workers), total + 3 * workers + 1)
            if m != total and host_shares(counts, m) is not None]
    suggestion = f" (e.g. {min(near, key=lambda m: abs(m - total))} MS)" if near else ""
    return (f"job: sagecal-mpi splits a host's MS among its workers in blocks of ceil(MS / workers) and waits "
            f"forever for a worker left without one; {total} MS over hosts of {'/'.join(map(str, counts))} "
            f"workers cannot be split so: give another number of MS{suggestion} or of workers")


def _slots(hostfile_line: str) -> int:
    for field_ in hostfile_line.split()[1:]:
        if field_.startswith("slots="):
            return int(field_.split("=", 1)[1])
    return 1


def _stage_script(job_dir: str, assignment: dict[str, list[str]]) -> str:
    """Shell (in the master container) that links each container's MS into stage/<its address>/."""
    lines = [f"mkdir -p {job_dir}/solutions"]
    listing = []
    for address, files in assignment.items():
        folder = shlex.quote(f"{job_dir}/stage/{address}")
        lines.append(f"mkdir -p {folder}")
        for ms in files:
            lines.append(f"ln -sfn {shlex.quote(ms)} {folder}/{shlex.quote(PurePosixPath(ms).name)}")
            listing.append(f"{address} {ms}")
    return (f"cat > {job_dir}/assignment.txt <<'ASSIGN'\n" + "\n".join(listing) + "\nASSIGN\n"
            + "\n".join(lines) + "\n")


def _gather_solutions_script(job_dir: str) -> str:
    """Shell run when mpirun has ended: each worker's solutions into solutions/, the stage links removed.
    A name met twice (two ranks calibrated one MS) keeps both, the second suffixed with its address."""
    return f"""for f in {job_dir}/stage/*/*.solutions; do
  [ -f "$f" ] || continue
  name=$(basename "$f"); address=$(basename "$(dirname "$f")")
  if [ -e "{job_dir}/solutions/$name" ]; then
    echo "astrostack: $name written twice; the copy of $address kept as solutions/$name.$address" >&2
    mv "$f" "{job_dir}/solutions/$name.$address"
  else
    mv "$f" "{job_dir}/solutions/$name"
  fi
done
find {job_dir}/stage -type l -delete 2>/dev/null
find {job_dir}/stage -depth -type d -empty -delete 2>/dev/null
"""


RANK_WRAPPER = r"""#!/bin/bash
# One rank of a job, run in the job folder. Its output also goes to
# ranks/<rank>.log; ranks/<rank>.json gets its host, MPI address, exit code,
# wall and CPU seconds (null until the rank ends), also when mpirun stops it.
#
# Open MPI stops a rank with SIGTERM to its process group and, as soon as one
# rank is gone, SIGKILL to the others: a shell there may die before it writes
# anything. So this shell (A, the process Open MPI started) only passes stop
# signals on to B, itself again in a session of its own (setsid), which runs
# the program, passes the signals on to it, waits for it and writes the
# figures. If A is killed, B sees it gone within a second and stops the
# program as if told to. When the job has a stage (sagecal-mpi), B first
# points this container's /stage/<job> at stage/<its MPI address>, the folder
# that links only its MS.
if [ -z "${ASTROSTACK_RANK_PARENT:-}" ]; then
  ASTROSTACK_RANK_PARENT=$$ setsid "$0" "$@" &
  inner=$!
  for sig in TERM INT HUP; do
    # shellcheck disable=SC2064
    trap "kill -$sig $inner 2>/dev/null" "$sig"
  done
  while :; do
    wait "$inner"
    code=$?
    kill -0 "$inner" 2>/dev/null || break  # still running: a trapped signal ended the wait
  done
  exit "$code"
fi

parent=$ASTROSTACK_RANK_PARENT
unset ASTROSTACK_RANK_PARENT
job=$(cd "$(dirname "$0")" && pwd)
dir=$job/ranks
rank=${OMPI_COMM_WORLD_RANK:-0}
me=$(sed -n 's/.*"ip": *"\([0-9.]*\)".*/\1/p' /etc/astrostack-node.json 2>/dev/null)
if [ -d "$job/stage" ]; then
  mkdir -p /stage
  if ! { ln -sfn "$job/stage/$me" "/stage/.$rank.$$" && mv -Tf "/stage/.$rank.$$" "/stage/$(basename "$job")"; }; then
    echo "rank $rank: cannot link /stage/$(basename "$job") to $job/stage/$me" >&2
    exit 125
  fi
fi
cd "$job" || exit 125

# figures EXIT_CODE WALL_S CPU_USER_S CPU_SYS_S STOPPED_BY (JSON values): ranks/<rank>.json, one write.
figures() {
  printf '{"rank": %d, "host": "%s", "address": "%s", "exit_code": %s, "wall_s": %s, "cpu_user_s": %s, "cpu_sys_s": %s, "stopped_by": %s}\n' \
    "$rank" "${HOSTNAME:-unknown}" "$me" "$@" > "$dir/$rank.json"
}
# usec NAME SECONDS[.FRACTION] and seconds NAME USEC, in integers (bash has no floats).
usec() {
  local whole=${2%%.*} fraction=000000
  [ "$whole" = "$2" ] || fraction=${2#*.}000000
  printf -v "$1" '%d' $(( 10#$whole * 1000000 + 10#${fraction:0:6} ))
}
seconds() { printf -v "$1" '%d.%03d' $(( $2 / 1000000 )) $(( $2 % 1000000 / 1000 )); }
# cpu NAME XmY.YYYs (a field of `times`) as seconds.
cpu() {
  local minutes=${2%%m*} rest=${2#*m}
  usec "$1" "${rest%s}"
  seconds "$1" $(( ${!1} + 10#$minutes * 60000000 ))
}

start=$EPOCHREALTIME t0=0 t1=0 wall=
figures null null null null null
signal=
# tee ignores the stop signals and a closed pipe: it ends when the program's output does.
"$@" < /dev/null > >(trap '' TERM INT HUP; exec tee -p "$dir/$rank.log") 2>&1 &
child=$!
for sig in TERM INT HUP; do
  # shellcheck disable=SC2064
  trap "signal=$sig; kill -$sig $child 2>/dev/null" "$sig"
done
(while kill -0 "$parent" 2>/dev/null; do sleep 1; done; kill -TERM $$) &
watcher=$!
while :; do
  wait "$child"
  code=$?
  kill -0 "$child" 2>/dev/null || break  # still running: a trapped signal ended the wait
done
trap '' TERM INT HUP
kill "$watcher" 2>/dev/null
usec t0 "$start"
usec t1 "$EPOCHREALTIME"
seconds wall $(( t1 - t0 ))
# `times` line 2: user and system CPU of this shell's children (the program).
times > "$dir/.$rank.times"
{ read -r _; read -r cpu_user cpu_sys; } < "$dir/.$rank.times"
rm -f "$dir/.$rank.times"
cpu cpu_user "$cpu_user"
cpu cpu_sys "$cpu_sys"
stopped=null
[ -z "$signal" ] || stopped="\"SIG$signal\""
figures "$code" "$wall" "$cpu_user" "$cpu_sys" "$stopped"
exit "$code"
"""


def _job_script(job_dir: str, record: dict[str, Any], command: list[str], setup: str = "", finish: str = "") -> str:
    quoted = " ".join(shlex.quote(part) for part in command)
    return (
        f"set -o pipefail\nmkdir -p {job_dir}/ranks\n"
        f"cat > {job_dir}/job.json <<'JOB'\n{json.dumps(record)}\nJOB\n"
        f"cat > {job_dir}/rank-wrapper.sh <<'WRAP'\n{RANK_WRAPPER}WRAP\nchmod +x {job_dir}/rank-wrapper.sh\n"
        f"{setup}"
        f"echo {shlex.quote(quoted)} > {job_dir}/command.txt\n"
        f"{quoted} 2>&1 | tee {job_dir}/output.log\n"
        f"code=$?\n{finish}echo $code > {job_dir}/exit_code\nexit $code\n"
    )


# Records --------------------------------------------------------------------


def record_job(cluster: str, result: BaseModel, exclude: frozenset[str] = frozenset({"output_tail"})) -> None:
    """Append a job's result (but the EXCLUDEd fields) to the cluster's record, under its lock."""
    with state.cluster_lock(cluster):
        record = state.load(cluster)
        record.jobs.append(json.loads(result.model_dump_json(exclude=set(exclude))))
        state.save(record)


def list_jobs(cluster: str) -> list[dict[str, Any]]:
    return list(state.load(cluster).jobs)


def raise_for_exit(result: JobResult) -> None:
    if result.exit_code != 0:
        raise JobFailed(f"job {result.id} on {result.cluster} exited {result.exit_code}; logs in {result.job_dir}",
                        job_exit_code=result.exit_code)


def fetch(cluster: str, job_id: str, out_dir: Path) -> Path:
    """Copy a job's folder from the cluster's share into OUT_DIR/JOB_ID
    (solutions, logs, per-rank figures; links into the share are left out)."""
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
        archive.extractall(target.parent, filter=_regular_members)
    return target


def _regular_members(member: tarfile.TarInfo, path: str) -> Optional[tarfile.TarInfo]:
    """tarfile's data filter, without links (a stage left by a stopped job links into the share)."""
    if member.issym() or member.islnk():
        return None
    return tarfile.data_filter(member, path)
