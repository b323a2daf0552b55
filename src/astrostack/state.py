"""What astrostack remembers about each cluster: one JSON file per cluster.

Files live in :func:`astrostack.paths.state_dir` (mode 0700) as
``<name>.json`` (mode 0600, written atomically: a crash leaves the old file or
the new one, never half of one). Beside them: ``<name>.lock`` (the per-cluster
process lock) and ``<name>.runs/<run_id>/`` (evidence of each deployment).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from astrostack import paths
from astrostack.errors import AstrostackError, Busy, InvalidInput, UnknownCluster
from astrostack.locks import pid_lock

SCHEMA_VERSION = 1
FILE_MODE = 0o600
DIR_MODE = 0o700
# Cluster names are DNS labels (spec.py); this also keeps names from escaping the state dir.
_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Status = Literal["creating", "ready", "scaling", "failed", "rolled_back", "deleting", "deleted"]


class StateCorrupt(AstrostackError):
    """A state file exists but cannot be read as a cluster record."""


class ClusterBusy(Busy):
    """Another astrostack process holds the cluster's lock (exit 5, as every "busy")."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PhaseRecord(BaseModel):
    """Wall-clock times of one deployment phase and how it ended."""

    model_config = ConfigDict(extra="forbid")

    started: Optional[datetime] = None
    finished: Optional[datetime] = None
    outcome: Optional[str] = None  # "done" | "failed" | "timeout" | ...


class ClusterRecord(BaseModel):
    """Everything astrostack needs to find, show, use and delete a cluster."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    cloud: str
    mode: str
    spec_hash: str
    spec: dict[str, Any] = Field(default_factory=dict)
    stack_id: Optional[str] = None
    stack_name: Optional[str] = None
    status: Status = "creating"
    phases: dict[str, PhaseRecord] = Field(default_factory=dict)
    hosts_target: int = 0
    nodes_target: int = 0
    hosts_ready: int = 0
    nodes_ready: int = 0
    image_digests: dict[str, str] = Field(default_factory=dict)
    evidence_dir: Optional[str] = None
    ssh_private_key_path: Optional[str] = None
    manager_address: Optional[str] = None  # the manager's floating IP, once the stack has one
    previous_spec: Optional[dict[str, Any]] = None  # the spec before the last scale, for `rollback`
    jobs: list[dict[str, Any]] = Field(default_factory=list)
    created: datetime = Field(default_factory=utcnow)
    updated: datetime = Field(default_factory=utcnow)

    @classmethod
    def from_spec(cls, spec: Any, **fields: Any) -> ClusterRecord:
        """A new record for a :class:`~astrostack.spec.ClusterSpec`, status ``creating``."""
        return cls(
            name=spec.name,
            cloud=spec.cloud,
            mode=spec.mode.value,
            spec_hash=spec.spec_hash(),
            spec=spec.model_dump(mode="json"),
            hosts_target=spec.hosts,
            nodes_target=spec.nodes,
            **fields,
        )


# Paths ----------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a cluster name: 1-32 chars of a-z, 0-9 and '-', starting with a letter")
    return name


def _state_dir() -> Path:
    directory = paths.state_dir()
    if directory.stat().st_mode & 0o777 != DIR_MODE:
        directory.chmod(DIR_MODE)
    return directory


def state_path(name: str) -> Path:
    return _state_dir() / f"{_check_name(name)}.json"


def lock_path(name: str) -> Path:
    return _state_dir() / f"{_check_name(name)}.lock"


def evidence_dir(name: str, run_id: str) -> Path:
    """``<state_dir>/<name>.runs/<run_id>/``, created (mode 0700) if missing."""
    if not _RUN_ID.fullmatch(run_id):
        raise InvalidInput(f"{run_id!r} is not a run id: 1-64 chars of A-Z, a-z, 0-9, '_', '.', '-'")
    runs = _state_dir() / f"{_check_name(name)}.runs"
    runs.mkdir(mode=DIR_MODE, exist_ok=True)
    directory = runs / run_id
    directory.mkdir(mode=DIR_MODE, exist_ok=True)
    return directory


# Records --------------------------------------------------------------------


def exists(name: str) -> bool:
    return state_path(name).is_file()


def load(name: str) -> ClusterRecord:
    path = state_path(name)
    if not path.exists() and not path.is_symlink():
        raise UnknownCluster(f"no cluster named {name!r} is recorded here", hint="`astrostack list` shows the clusters")
    return _read(path)


def try_load(name: str) -> tuple[Optional[ClusterRecord], Optional[StateCorrupt]]:
    """(record, None), (None, the reason it cannot be read), or (None, None) when there is none."""
    try:
        return load(name), None
    except UnknownCluster:
        return None, None
    except StateCorrupt as exc:
        return None, exc


def _read(path: Path) -> ClusterRecord:
    """One record file; anything unreadable (binary, a folder, no permission) is StateCorrupt."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise StateCorrupt(f"{path}: not a cluster record (not UTF-8 text)",
                           hint="move the file aside; the cluster itself is untouched") from None
    except OSError as exc:
        raise StateCorrupt(f"{path}: cannot be read ({exc.strerror or exc})",
                           hint="move the file aside; the cluster itself is untouched") from None
    return _parse(text, path)


def _parse(text: str, path: Path) -> ClusterRecord:
    try:
        return ClusterRecord.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "file"
        raise StateCorrupt(
            f"{path}: not a valid cluster record ({where}: {first['msg']})",
            hint="move the file aside; the stack itself is untouched",
        ) from None


def save(record: ClusterRecord, *, now: Optional[datetime] = None) -> Path:
    """Write ``record`` atomically (temp file, fsync, ``os.replace``), mode 0600."""
    record.updated = now or utcnow()
    path = state_path(record.name)
    payload = record.model_dump_json(indent=2) + "\n"
    _write_atomically(path, payload)
    return path


def _write_atomically(path: Path, payload: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as stream:
            os.fchmod(stream.fileno(), FILE_MODE)
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def scan() -> tuple[list[ClusterRecord], list[StateCorrupt]]:
    """Every readable cluster record by name, and what is wrong with each unreadable one:
    one bad file never hides the others."""
    records, problems = [], []
    for path in sorted(_state_dir().glob("*.json")):
        try:
            records.append(_read(path))
        except StateCorrupt as exc:
            problems.append(exc)
    return records, problems


def list_records() -> list[ClusterRecord]:
    """Every readable cluster record, by name."""
    return scan()[0]


def delete(name: str) -> bool:
    """Forget a cluster (its evidence folders stay). Returns whether a record existed."""
    path = state_path(name)
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    _fsync_directory(_state_dir())
    return True


def record_phase(record: ClusterRecord, phase: str, outcome: Optional[str] = None, *,
                 now: Optional[datetime] = None) -> PhaseRecord:
    """Mark ``phase`` started (no ``outcome``) or finished with ``outcome``, in memory.

    A resumed deployment keeps what the first attempt measured: a phase already
    done stays as it was, and an unfinished one keeps its first start (so a
    benchmark reading the record sees the deployment's real times). The caller
    saves the record; times are wall-clock UTC.
    """
    now = now or utcnow()
    existing = record.phases.get(phase)
    if existing is not None and existing.outcome == "done":
        return existing
    if outcome is None and existing is not None and existing.outcome == "interrupted":
        entry = existing.model_copy(update={"finished": None, "outcome": None})  # resumed after Ctrl-C
    elif outcome is None:
        entry = existing if existing is not None and existing.finished is None else PhaseRecord(started=now)
    else:
        entry = (existing or PhaseRecord(started=now)).model_copy(update={"finished": now, "outcome": outcome})
    record.phases[phase] = entry
    return entry


# Process lock ---------------------------------------------------------------


@contextlib.contextmanager
def cluster_lock(name: str) -> Iterator[Path]:
    """Hold ``<name>.lock`` (``flock``, non-blocking) while the block runs.

    Raises :class:`ClusterBusy` naming the holder's pid when another process
    has it. The file is kept afterwards: unlinking a lock file races with the
    next process opening it.
    """
    def busy(holder: str) -> ClusterBusy:
        return ClusterBusy(
            f"cluster {name} is busy: another astrostack process (pid {holder}) holds it",
            hint="wait for it to finish, or stop that process",
        )

    with pid_lock(lock_path(name), busy) as path:
        yield path


def dump(record: ClusterRecord) -> dict[str, Any]:
    """The record as plain JSON data (for ``--json`` output)."""
    return json.loads(record.model_dump_json())


__all__ = [
    "ClusterBusy",
    "ClusterRecord",
    "PhaseRecord",
    "StateCorrupt",
    "cluster_lock",
    "delete",
    "dump",
    "evidence_dir",
    "exists",
    "list_records",
    "load",
    "scan",
    "try_load",
    "record_phase",
    "save",
    "state_path",
]
