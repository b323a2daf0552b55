"""`task-map` jobs on a task-queue cluster: one command mapped over the files
on the share that a glob matches, one Dask task per file.

The job file is checked here (strict types, one-line errors naming the
field); the job runs in the scheduler container, driven by
:mod:`astrostack.taskqueue.driver_remote` (sent over SSH on standard input),
which retries failed tasks, writes every task's result into Redis exactly
once and leaves summary.json, results.jsonl, output.log and exit_code in
the job's folder on the share (`jobs/<id>/`). Its progress lines are passed
on as they come. `astrostack jobs` and `fetch` see it as any other job.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from astrostack import state
from astrostack.cluster import dask as task_queue
from astrostack.cluster.access import ManagerAccess, cluster_access
from astrostack.cluster.swarm import TailSink
from astrostack.errors import InvalidInput, JobFailed, quote
from astrostack.job import record_job, relative_share_path
from astrostack.render import REDIS_PORT, SCHEDULER_PORT
from astrostack.spec import ClusterSpec, describe_validation_error, spec_from_dict

PROFILE = "task-map"
SHARE_IN_CONTAINER = "/share"
PLACEHOLDERS = ("input", "relpath", "name", "stem", "index", "job_dir", "job_id")
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
SHARE_GLOB = re.compile(r"[A-Za-z0-9._/*?\[\]!+=,@%{}-]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
SUMMARY_MARK = "SUMMARY "
# Time for the driver to start and write its summary after the job's own timeout.
DRIVER_GRACE_S = 120


def _placeholders_known(text: str) -> str:
    """TEXT whose {placeholders} are all known (other braces, e.g. awk's, have no name in them)."""
    for name in PLACEHOLDER.findall(text):
        if name not in PLACEHOLDERS:
            raise ValueError(f"{quote(text)} has an unknown placeholder {{{name}}}: use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    return text


def _relative_share_path(value: str) -> str:
    if not value.strip():
        raise ValueError(f"{quote(value)} must be a path relative to the share, without '..'")
    return relative_share_path(value)


class TaskMapJob(BaseModel):
    """profile: task-map: COMMAND once per file matching INPUTS on the share."""

    model_config = ConfigDict(extra="forbid")

    profile: Literal["task-map"] = PROFILE
    name: Optional[str] = Field(default=None, description="Label of the job (its id starts with it).")
    inputs: str = Field(description="Glob on the share, relative to it (e.g. data/*.fits; ** recurses): one task per file.")
    command: Union[str, list[str]] = Field(
        description="The program and its arguments, a list or one line split as a shell would (no shell runs "
        "it); {input} is the file's path in the containers, also {relpath} {name} {stem} {index} {job_dir} {job_id}.")
    stdin: Optional[str] = Field(default=None, description="A file on the share fed to the command's standard "
                                 "input (placeholders allowed), e.g. {relpath}.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment of the command (placeholders allowed).")
    workdir: str = Field(default="{job_dir}", description="Working directory of each task: {job_dir}/... or a "
                         "path relative to the share; created if missing.")
    task_timeout_s: int = Field(default=600, ge=1, le=86400, description="Seconds a task may run before it is "
                                "stopped (exit 124) and, if retries are left, run again.")
    retries: int = Field(default=1, ge=0, le=10, description="Reruns of a task that failed (non-zero exit, "
                         "timeout, or its worker lost too often).")
    timeout_s: int = Field(default=3600, ge=1, le=7 * 86400, description="Seconds for the whole job; "
                           "unfinished tasks are then cancelled.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", value):
            raise ValueError(f"{quote(value)}: a job name is 1-40 chars of a-z, 0-9 and '-'")
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: str) -> str:
        if not SHARE_GLOB.fullmatch(value):
            raise ValueError(f"{quote(value)} is not a glob of [A-Za-z0-9._/*?[]!+=,@%{{}}-]")
        return _relative_share_path(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: Union[str, list[str]]) -> list[str]:
        if isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"{quote(value)} cannot be split into arguments ({exc})") from None
        if not value or not value[0].strip():
            raise ValueError("the command is empty")
        return [_placeholders_known(part) for part in value]

    @field_validator("stdin")
    @classmethod
    def _stdin(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else _relative_share_path(_placeholders_known(value))

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"{quote(key)} is not an environment variable name")
            _placeholders_known(text)
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str) -> str:
        _placeholders_known(value)
        return value if value.startswith("{job_dir}") else _relative_share_path(value)


def task_map_from_dict(data: dict[str, Any], source: str = "job") -> TaskMapJob:
    try:
        return TaskMapJob.model_validate(data, strict=True)
    except ValidationError as exc:
        raise InvalidInput(f"{source}: {describe_validation_error(exc)}") from None


class TaskMapResult(BaseModel):
    id: str
    cluster: str
    profile: str = PROFILE
    exit_code: int
    started: datetime
    finished: datetime
    job_dir: str
    command: list[str]
    ranks: int  # the Dask workers the job ran on (the `jobs` listing's column)
    threads: Optional[int] = None
    tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    tasks_per_s: float = 0.0
    summary: dict[str, Any] = Field(default_factory=dict)
    output_tail: str = ""

    @property
    def seconds(self) -> float:
        return (self.finished - self.started).total_seconds()


def plan(spec: ClusterSpec, job: TaskMapJob, job_id: str) -> dict[str, Any]:
    """What the driver gets: the job, with the cluster's facts."""
    return {
        "job_id": job_id,
        "job_dir": f"{SHARE_IN_CONTAINER}/jobs/{job_id}",
        "inputs": job.inputs,
        "command": list(job.command),
        "stdin": job.stdin,
        "env": dict(job.env),
        "workdir": job.workdir,
        "task_timeout_s": job.task_timeout_s,
        "retries": job.retries,
        "timeout_s": job.timeout_s,
        "redis": spec.queue.redis.value,
        "redis_port": REDIS_PORT,
        "scheduler": f"tcp://127.0.0.1:{SCHEDULER_PORT}",
    }


def driver_script(job_plan: dict[str, Any]) -> str:
    encoded = base64.b64encode(json.dumps(job_plan).encode()).decode()
    return task_queue.scheduler_python([encoded], task_queue.remote_program("astrostack.taskqueue",
                                                                               "driver_remote.py"))


def run_task_map(record: state.ClusterRecord, job: Union[TaskMapJob, dict[str, Any]], *,
                 access: Optional[ManagerAccess] = None,
                 on_output: Optional[Callable[[bytes], None]] = None) -> TaskMapResult:
    """Run JOB on the task queue of RECORD; the result carries the job's exit code
    (0: every task succeeded)."""
    if isinstance(job, dict):
        job = task_map_from_dict(job)
    if record.status != "ready":
        raise InvalidInput(f"cluster {record.name} is {record.status}, not ready")
    spec = spec_from_dict(record.spec)
    if not spec.is_task_queue:
        raise InvalidInput(f"profile: task-map runs on a task-queue cluster; {record.name} is kind {spec.kind.value}")
    if access is None:
        spec, access = cluster_access(record.name)
    job_id = f"{job.name or 'task-map'}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"
    started = datetime.now(timezone.utc)
    tail = TailSink(then=on_output)
    exit_code = access.stream(driver_script(plan(spec, job, job_id)), timeout=job.timeout_s + DRIVER_GRACE_S,
                              sink=tail)
    finished = datetime.now(timezone.utc)
    summary = last_summary(tail.text())
    outcome = TaskMapResult(
        id=job_id, cluster=record.name, exit_code=exit_code, started=started, finished=finished,
        job_dir=f"{spec.nfs.mount_point}/jobs/{job_id}", command=list(job.command),
        ranks=int(summary.get("workers", spec.nodes)), threads=spec.queue.threads,
        tasks=int(summary.get("tasks", 0)), succeeded=int(summary.get("succeeded", 0)),
        failed=int(summary.get("failed", 0)), tasks_per_s=float(summary.get("tasks_per_s", 0.0)),
        summary=summary, output_tail=tail.text())
    record_job(record.name, outcome, exclude=frozenset({"output_tail", "summary"}))
    return outcome


def last_summary(output: str) -> dict[str, Any]:
    """The driver's last `SUMMARY {...}` line ({} if it wrote none)."""
    for line in reversed(output.splitlines()):
        if line.startswith(SUMMARY_MARK):
            try:
                data = json.loads(line[len(SUMMARY_MARK):])
            except ValueError:
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def raise_for_exit(result: TaskMapResult) -> None:
    if result.exit_code != 0:
        raise JobFailed(f"job {result.id} on {result.cluster}: {result.failed} of {result.tasks} tasks failed "
                        f"(exit {result.exit_code}); summary in {result.job_dir}/summary.json",
                        job_exit_code=result.exit_code)
