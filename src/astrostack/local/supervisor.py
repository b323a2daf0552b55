"""Start, watch and stop the local cloud's services (the table of :mod:`.services`).

Each service starts detached, in its own session (so ``stop`` ends exactly
that process group, children included), with a pid file ``LOCAL/run/NAME.pid``
holding the pid and the kernel's start time of the process (a reused pid is
never mistaken for ours) and its output appended to ``LOCAL/logs/NAME.log``.
Starting follows the dependencies, in parallel where they allow; every wait
has a deadline, and stopping escalates to SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from astrostack.errors import LocalCloudError
from astrostack.local import commands, layout
from astrostack.local.services import Service, by_name, with_prerequisites

Progress = Callable[[str], None]
Clock = Callable[[], float]
Sleep = Callable[[float], None]

START_DEADLINE_S = 180.0
STOP_GRACE_S = 15.0
KILL_WAIT_S = 5.0
POLL_S = 0.5
PROGRESS_EVERY_S = 10.0
# A daemon without an API counts as started once it has stayed alive this long.
SETTLE_S = 4.0


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_ticks: int


def process_start_ticks(pid: int) -> Optional[int]:
    """The kernel's start time of a live, non-zombie process (None if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def read_pid_file(path: Path) -> Optional[PidRecord]:
    try:
        pid, ticks = path.read_text().split()
        return PidRecord(int(pid), int(ticks))
    except (FileNotFoundError, ValueError):
        return None


def our_group(record: Optional[PidRecord]) -> Optional[int]:
    """The process group a pid file names, if it is still ours.

    Ours: the leader is the very process we started (same start time), or
    the leader is gone and processes of its group remain (our orphans: a
    group id is not reused while the group has members). A live leader with
    another start time is a reused pid, not ours.
    """
    if record is None:
        return None
    ticks = process_start_ticks(record.pid)
    if ticks == record.start_ticks:
        return record.pid
    if ticks is None and group_members(record.pid):
        return record.pid
    return None


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in a process group (a service and its children)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of these processes (VmRSS), summed."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: Optional[int]
    alive: bool
    answering: Optional[bool]  # None: no API to ask
    health: str
    log: str
    rss_bytes: int

    def as_json(self) -> dict:
        return dict(self.__dict__)


class Supervisor:
    """Start, watch and stop the services of one table."""

    def __init__(self, table: list[Service], say: Progress, *, clock: Clock = time.monotonic,
                 sleep: Sleep = time.sleep, settle_s: float = SETTLE_S):
        self.settle_s = settle_s
        self.services = by_name(table)
        self.table = table
        self.say = say
        self.clock = clock
        self.sleep = sleep
        self._children: dict[str, subprocess.Popen] = {}
        self._started_at: dict[str, float] = {}

    # --- state ---

    def pid(self, name: str) -> Optional[int]:
        """The service's pid if the process recorded in its pid file is still that process."""
        record = read_pid_file(self.services[name].pid_file)
        if record is None:
            return None
        child = self._children.get(name)
        if child is not None:
            child.poll()  # reap it if it exited
        return record.pid if process_start_ticks(record.pid) == record.start_ticks else None

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def answering(self, name: str) -> bool:
        service = self.services[name]
        if service.probe is None:
            started = self._started_at.get(name)
            return self.running(name) and (started is None or self.clock() - started >= self.settle_s)
        return service.probe()

    def status(self) -> list[ServiceStatus]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(self._status_of, self.table))

    def _status_of(self, service: Service) -> ServiceStatus:
        pid = self.pid(service.name)
        answering = None if service.probe is None else (pid is not None and service.probe())
        members = group_members(pid) if pid else []
        return ServiceStatus(service.name, pid, pid is not None, answering, service.health,
                             str(service.log), rss_bytes(members))

    # --- start ---

    def start(self, names: list[str], deadline_s: float = START_DEADLINE_S) -> list[str]:
        """Start the named services that are not running, each once what it needs answers.

        Returns the names it started. Raises LocalCloudError naming the service
        and its log if one exits, or at the deadline.
        """
        order = with_prerequisites(self.table, names)
        pending = [name for name in order if self._wanted(name)]
        started: list[str] = []
        ready = {name for name in order if name not in pending}
        deadline = self.clock() + deadline_s
        next_note = self.clock() + PROGRESS_EVERY_S
        while pending:
            self._start_unblocked(pending, ready, started)
            for name in [n for n in pending if n in self._started_at]:
                self._check_alive(name)
                if self.answering(name):
                    pending.remove(name)
                    ready.add(name)
                    self.say(f"  {name} up ({self.clock() - self._started_at[name]:.0f} s)")
            if not pending:
                break
            if self.clock() >= deadline:
                raise self._timeout_error(pending, deadline_s)
            if self.clock() >= next_note:
                self.say(f"  waiting for {', '.join(pending)}")
                next_note = self.clock() + PROGRESS_EVERY_S
            self.sleep(POLL_S)
        return started

    def _wanted(self, name: str) -> bool:
        """Not running yet, and able to run at all (else said once and skipped)."""
        service = self.services[name]
        if self.running(name):
            return False
        if service.available is not None and not service.available():
            self.say(f"  {name} not started: {service.missing_reason}")
            return False
        return True

    def _start_unblocked(self, pending: list[str], ready: set[str], started: list[str]) -> None:
        for name in pending:
            if name in self._started_at or not set(self.services[name].after) <= ready | self._skipped(name):
                continue
            self.spawn(self.services[name])
            started.append(name)

    def _skipped(self, name: str) -> set[str]:
        """Prerequisites that cannot run (missing code): they do not block the others."""
        return {dep for dep in self.services[name].after
                if self.services[dep].available is not None and not self.services[dep].available()}

    def spawn(self, service: Service) -> int:
        """Launch one service detached, in its own session; record its pid."""
        self._kill_leftovers(service)
        env = {**_clean_environment(), **service.env}
        with open(service.log, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} astrostack starts {service.name}\n".encode())
            log.flush()
            try:
                process = subprocess.Popen(list(service.argv), stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, cwd=layout.local_dir(), env=env,
                                           start_new_session=True, close_fds=True)
            except OSError as exc:
                raise LocalCloudError(f"{service.name} could not start: {exc}", hint=f"log: {service.log}") from exc
        ticks = process_start_ticks(process.pid) or 0
        service.pid_file.write_text(f"{process.pid} {ticks}\n")
        self._children[service.name] = process
        self._started_at[service.name] = self.clock()
        return process.pid

    def _kill_leftovers(self, service: Service) -> None:
        """Children of an earlier run whose leader died still hold ports: end that group first."""
        pgid = our_group(read_pid_file(service.pid_file))
        if pgid is not None:
            self.say(f"  ending leftover processes of {service.name} (group {pgid})")
            self._end_group(service.name, pgid)

    def _check_alive(self, name: str) -> None:
        if self.running(name):
            return
        child = self._children.get(name)
        code = child.poll() if child is not None else None
        log = self.services[name].log
        raise LocalCloudError(f"{name} exited (code {code}) while starting: {commands.log_tail(log, 4)}",
                              hint=f"log: {log}")

    def _timeout_error(self, pending: list[str], deadline_s: float) -> LocalCloudError:
        name = pending[0]
        log = self.services[name].log
        return LocalCloudError(f"{', '.join(pending)} not up within {deadline_s:.0f} s; {name}: "
                               f"{commands.log_tail(log, 3)}", hint=f"log: {log}")

    # --- stop ---

    def stop(self, names: list[str]) -> list[str]:
        """End exactly the process groups these services' pid files name; SIGKILL at the deadline."""
        groups = {}
        for name in names:
            pgid = our_group(read_pid_file(self.services[name].pid_file))
            if pgid is not None:
                groups[name] = pgid
            else:
                self.services[name].pid_file.unlink(missing_ok=True)
        for pgid in groups.values():
            _signal_group(pgid, signal.SIGTERM)
        self._wait_groups_gone(groups, STOP_GRACE_S)
        for name, pgid in groups.items():
            if group_members(pgid):
                self.say(f"  {name} still alive {STOP_GRACE_S:.0f} s after SIGTERM: SIGKILL")
                _signal_group(pgid, signal.SIGKILL)
        still = self._wait_groups_gone(groups, KILL_WAIT_S)
        if still:
            raise LocalCloudError(f"could not stop {', '.join(still)}", hint="see `astrostack local status`")
        for name in groups:
            self.services[name].pid_file.unlink(missing_ok=True)
            self._children.pop(name, None)
        return list(groups)

    def _end_group(self, name: str, pgid: int) -> None:
        _signal_group(pgid, signal.SIGTERM)
        if self._wait_groups_gone({name: pgid}, STOP_GRACE_S):
            _signal_group(pgid, signal.SIGKILL)
            self._wait_groups_gone({name: pgid}, KILL_WAIT_S)

    def _wait_groups_gone(self, groups: dict[str, int], deadline_s: float) -> list[str]:
        deadline = self.clock() + deadline_s
        while True:
            for child in self._children.values():
                child.poll()
            alive = [name for name, pgid in groups.items() if group_members(pgid)]
            if not alive or self.clock() >= deadline:
                return alive
            self.sleep(POLL_S / 2)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return


def _clean_environment() -> dict[str, str]:
    """This process's environment without OpenStack, Python and venv settings."""
    keep = {key: value for key, value in os.environ.items()
            if not key.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
    keep["PATH"] = f"{layout.venv_dir() / 'bin'}:{keep.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    keep["PYTHONDONTWRITEBYTECODE"] = "1"
    return keep
