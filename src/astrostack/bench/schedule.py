"""Scheduled bench runs: a cron.d entry or a systemd .service + .timer pair.

Both run ``astrostack bench run MATRIX --db DB`` through ``flock -n`` on
``<ASTROSTACK_HOME>/bench/schedule-<name>.lock``, so a run that is still going
makes the next one a no-op before Python even starts; ``bench run`` also
holds its own lock (``runner.run_lock``, exit 5 when busy), which covers runs
started by hand. The two locks are distinct files on purpose: ``flock`` keeps
its descriptor open in the command it starts, so sharing one file would make
every scheduled run find itself busy.

The cron expression has the 5 standard fields (minute hour day-of-month month
day-of-week; numbers, names, ``*``, ranges, lists and steps). ``croniter``
validates it too when it is installed. For a systemd timer every field is
expanded to its values (``OnCalendar=Mon,Wed *-*-* 02:30:00``); an expression
that restricts both day-of-month and day-of-week is refused there, because
cron ORs the two and systemd ANDs them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from astrostack import paths
from astrostack.errors import AstrostackError, InvalidInput

CRON_DIR = Path("/etc/cron.d")
SYSTEMD_DIR = Path("/etc/systemd/system")
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
SYSTEMD_WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]


class ScheduleError(AstrostackError):
    """The scheduler (cron, systemd) is missing or refused the entry."""


@dataclass(frozen=True)
class CronField:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names for low, low+1, ...


CRON_FIELDS = (
    CronField("minute", 0, 59),
    CronField("hour", 0, 23),
    CronField("day of month", 1, 31),
    CronField("month", 1, 12, tuple(MONTHS)),
    CronField("day of week", 0, 7, tuple(WEEKDAYS)),  # 0 and 7 are Sunday
)


@dataclass(frozen=True)
class ScheduledFile:
    """A file the schedule installs, and its content."""

    path: Path
    content: str
    mode: int = 0o644


# Cron expressions ---------------------------------------------------------------


def parse_cron(expr: str) -> list[set[int]]:
    """The values each of the 5 fields allows; :class:`InvalidInput` naming the bad field."""
    parts = expr.split()
    if len(parts) != 5:
        raise InvalidInput(f"--cron {expr!r}: needs 5 fields (minute hour day-of-month month day-of-week), "
                           f"got {len(parts)}", hint="e.g. '30 2 * * *' for 02:30 every day")
    values = [_field_values(part, spec, expr) for part, spec in zip(parts, CRON_FIELDS)]
    _check_with_croniter(expr)
    values[4] = {0 if day == 7 else day for day in values[4]}
    return values


def _field_values(text: str, spec: CronField, expr: str) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _item_values(item, spec, expr)
    return values


def _item_values(item: str, spec: CronField, expr: str) -> set[int]:
    span, _, step_text = item.partition("/")
    step = _number(step_text, spec, expr, item) if step_text else 1
    if step < 1:
        raise _bad(expr, spec, item, "a step must be 1 or more")
    if span == "*":
        low, high = spec.low, spec.high
    elif "-" in span:
        low_text, _, high_text = span.partition("-")
        low, high = _value(low_text, spec, expr, item), _value(high_text, spec, expr, item)
    else:
        low = _value(span, spec, expr, item)
        high = spec.high if step_text else low
    if low > high:
        raise _bad(expr, spec, item, f"range {low}-{high} runs backwards")
    return set(range(low, high + 1, step))


def _value(text: str, spec: CronField, expr: str, item: str) -> int:
    if text.lower() in spec.names:
        return spec.low + spec.names.index(text.lower())
    value = _number(text, spec, expr, item)
    if not spec.low <= value <= spec.high:
        raise _bad(expr, spec, item, f"{value} is outside {spec.low}-{spec.high}")
    return value


def _number(text: str, spec: CronField, expr: str, item: str) -> int:
    if not text.isdigit():
        raise _bad(expr, spec, item, f"{text!r} is not a number" + (" or a name" if spec.names else ""))
    return int(text)


def _bad(expr: str, spec: CronField, item: str, why: str) -> InvalidInput:
    return InvalidInput(f"--cron {expr!r}: {spec.name} field {item!r}: {why}")


def _check_with_croniter(expr: str) -> None:
    try:
        from croniter import croniter
    except ImportError:
        return
    if not croniter.is_valid(expr):
        raise InvalidInput(f"--cron {expr!r}: croniter does not accept it")


# The command ----------------------------------------------------------------------


def bench_command(matrix: Path, db: Path) -> list[str]:
    """``astrostack bench run MATRIX --db DB`` with absolute paths (cron has no PWD, a short PATH)."""
    script = Path(sys.executable).parent / "astrostack"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "astrostack.cli.main"]
    return [*program, "bench", "run", str(matrix.resolve()), "--db", str(db.resolve())]


def flock_command(name: str, matrix: Path, db: Path) -> list[str]:
    flock = shutil.which("flock") or "/usr/bin/flock"
    return [flock, "-n", str(schedule_lock_file(name)), *bench_command(matrix, db)]


def schedule_lock_file(name: str) -> Path:
    return paths.subdir("bench") / f"schedule-{name}.lock"


def log_file(name: str) -> Path:
    return paths.subdir("bench") / f"schedule-{name}.log"


def _environment() -> dict[str, str]:
    """What the scheduled run needs from this shell: where astrostack keeps its files."""
    return {"ASTROSTACK_HOME": str(paths.home())}


# cron ----------------------------------------------------------------------------


def cron_entry(expr: str, name: str, matrix: Path, db: Path, user: str = "root") -> str:
    """A /etc/cron.d file: environment, then ``EXPR USER flock -n LOCK astrostack bench run ...``."""
    parse_cron(expr)
    command = shlex.join(flock_command(name, matrix, db)) + f" >> {shlex.quote(str(log_file(name)))} 2>&1"
    lines = [f"# astrostack bench {name}: installed by `astrostack bench schedule`",
             "SHELL=/bin/sh", "PATH=/usr/local/bin:/usr/bin:/bin"]
    lines += [f"{key}={value}" for key, value in _environment().items()]
    lines.append(f"{' '.join(expr.split())} {user} {_cron_escape(command)}")
    return "\n".join(lines) + "\n"


def _cron_escape(command: str) -> str:
    return command.replace("%", r"\%")  # cron turns an unescaped % into a newline


def plan_cron(expr: str, name: str, matrix: Path, db: Path, crontab_path: Optional[Path] = None) -> list[ScheduledFile]:
    path = crontab_path or CRON_DIR / f"astrostack-{name}"  # cron.d ignores names with dots
    return [ScheduledFile(path, cron_entry(expr, name, matrix, db))]


def install_cron(expr: str, matrix: Path, db: Path, name: str, crontab_path: Optional[Path] = None,
                 dry_run: bool = False) -> list[ScheduledFile]:
    """Write the cron.d entry (default ``/etc/cron.d/astrostack-<name>``); with dry_run, only plan it."""
    files = plan_cron(expr, name, matrix, db, crontab_path)
    if dry_run:
        return files
    if crontab_path is None and not cron_available():
        raise ScheduleError("cron is not installed here (no /etc/cron.d or cron daemon)",
                            hint="install cron, or use --systemd for a systemd timer")
    write_files(files)
    return files


def cron_available() -> bool:
    return CRON_DIR.is_dir() and any(shutil.which(daemon) for daemon in ("cron", "crond"))


# systemd --------------------------------------------------------------------------


def on_calendar(expr: str) -> str:
    """The cron expression as a systemd ``OnCalendar=`` value."""
    minutes, hours, days, months, weekdays = parse_cron(expr)
    every_day, every_weekday = set(range(1, 32)), set(range(7))
    if days != every_day and weekdays != every_weekday:
        raise InvalidInput(f"--cron {expr!r}: restricts both day of month and day of week; cron runs on either, "
                           "systemd only on both", hint="use one of the two, or cron instead of --systemd")
    weekday_part = "" if weekdays == every_weekday else ",".join(SYSTEMD_WEEKDAYS[d] for d in sorted(weekdays)) + " "
    date = f"*-{_calendar_list(months, range(1, 13))}-{_calendar_list(days, range(1, 32))}"
    time_of_day = f"{_calendar_list(hours, range(24))}:{_calendar_list(minutes, range(60))}:00"
    return f"{weekday_part}{date} {time_of_day}"


def _calendar_list(values: set[int], full: range) -> str:
    if values == set(full):
        return "*"
    return ",".join(f"{value:02d}" for value in sorted(values))


def systemd_units(expr: str, name: str, matrix: Path, db: Path) -> tuple[str, str]:
    """(service, timer) unit texts."""
    environment = " ".join(f"{key}={shlex.quote(value)}" for key, value in _environment().items())
    service = (
        "[Unit]\n"
        f"Description=astrostack bench {name}\n"
        "After=network-online.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"Environment={environment}\n"
        f"ExecStart={shlex.join(flock_command(name, matrix, db))}\n"
    )
    timer = (
        "[Unit]\n"
        f"Description=astrostack bench {name} on schedule ({' '.join(expr.split())})\n\n"
        "[Timer]\n"
        f"OnCalendar={on_calendar(expr)}\n"
        "Persistent=false\n\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return service, timer


def unit_name(name: str) -> str:
    return f"astrostack-bench-{name}"


def plan_systemd(expr: str, name: str, matrix: Path, db: Path, unit_dir: Optional[Path] = None) -> list[ScheduledFile]:
    folder = unit_dir or SYSTEMD_DIR
    service, timer = systemd_units(expr, name, matrix, db)
    return [ScheduledFile(folder / f"{unit_name(name)}.service", service),
            ScheduledFile(folder / f"{unit_name(name)}.timer", timer)]


def install_systemd(expr: str, matrix: Path, db: Path, name: str, unit_dir: Optional[Path] = None,
                    dry_run: bool = False) -> list[ScheduledFile]:
    """Write the units (default ``/etc/systemd/system``) and, on a systemd host, enable the timer."""
    files = plan_systemd(expr, name, matrix, db, unit_dir)
    if dry_run:
        return files
    write_files(files)
    if unit_dir is None:
        _enable_timer(name)
    return files


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _enable_timer(name: str) -> None:
    if not systemd_running():
        raise ScheduleError(f"units written to {SYSTEMD_DIR}, but systemd is not running here",
                            hint=f"on a systemd host: systemctl daemon-reload && "
                                 f"systemctl enable --now {unit_name(name)}.timer")
    for command in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", f"{unit_name(name)}.timer"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise ScheduleError(f"{' '.join(command)} failed: {result.stderr.strip()}")


# Writing ----------------------------------------------------------------------------


def write_files(files: list[ScheduledFile]) -> None:
    for scheduled in files:
        try:
            scheduled.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = scheduled.path.with_name(f".{scheduled.path.name}.tmp")
            temporary.write_text(scheduled.content)
            os.chmod(temporary, scheduled.mode)
            temporary.replace(scheduled.path)
        except PermissionError:
            raise ScheduleError(f"cannot write {scheduled.path}: permission denied",
                                hint="run as root, or --dry-run to see the entry") from None
