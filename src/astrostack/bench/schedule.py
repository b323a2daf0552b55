"""Scheduled bench runs: a cron.d entry or a systemd .service + .timer pair.

Both run ``astrostack bench run MATRIX --db DB`` through ``flock -n`` on
``<ASTROSTACK_HOME>/bench/schedule-<name>.lock``, so a run that is still going
makes the next one a no-op before Python even starts; ``bench run`` also
holds its own lock (``runner.run_lock``, exit 5 when busy), which covers runs
started by hand. The two locks are distinct files on purpose: ``flock`` keeps
its descriptor open in the command it starts, so sharing one file would make
every scheduled run find itself busy.

The cron expression has the 5 standard fields (minute hour day-of-month month
day-of-week) in the subset every cron reads alike: ASCII numbers, 3-letter
names in the month and day-of-week fields, ``*``, ranges ``a-b`` (never
backwards), lists, and steps after ``*`` or a range. ``croniter`` validates
each field (ranges, names, steps); the values written for systemd are those
cron itself runs: the field's values as cron expands them, which must agree
with croniter's reading, or the expression is refused rather than guessed.
Extensions some crons or croniter take (``L``, ``W``, ``#``, ``?``, ``H``,
seconds or years fields, ``5/15``) are refused: /etc/cron.d would not run
them, or not alike.

For a systemd timer every field becomes its values (``OnCalendar=Mon,Wed
*-*-* 02:30:00``). Cron runs on the day of month OR the day of week when both
fields are restricted (neither starts with ``*``), systemd only on both: such
an expression is refused for --systemd. When either starts with ``*`` (even
``*/2``) cron, like systemd, wants both.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from astrostack import paths
from astrostack.errors import InvalidInput, ScheduleError, quote, show_path

CRON_DIR = Path("/etc/cron.d")
SYSTEMD_DIR = Path("/etc/systemd/system")
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
SYSTEMD_WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]


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
CRON_ITEM = re.compile(r"(?:(?P<star>\*)|(?P<low>[0-9]+|[A-Za-z]{3})(?:-(?P<high>[0-9]+|[A-Za-z]{3}))?)"
                       r"(?:/(?P<step>[0-9]+))?", re.ASCII)


@dataclass(frozen=True)
class ScheduledFile:
    """A file the schedule installs, and its content."""

    path: Path
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class CronSchedule:
    """The values each field allows (Sunday is 0), and which day fields start with ``*``."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_star: bool
    weekdays_star: bool


# Cron expressions ---------------------------------------------------------------


def parse_cron(expr: str) -> CronSchedule:
    """Validate EXPR (croniter) and expand it as cron does; :class:`InvalidInput` naming the bad field."""
    if not isinstance(expr, str) or not expr.isascii() or not expr.isprintable():
        raise InvalidInput(f"--cron {quote(expr)}: cron takes ASCII digits, names and * , - / only")
    parts = expr.split()
    if len(parts) != 5:
        raise InvalidInput(f"--cron {quote(expr)}: needs 5 fields (minute hour day-of-month month day-of-week), "
                           f"got {len(parts)}", hint="e.g. '30 2 * * *' for 02:30 every day")
    values = [_field_values(part, index, expr) for index, part in enumerate(parts)]
    return CronSchedule(frozenset(values[0]), frozenset(values[1]), frozenset(values[2]), frozenset(values[3]),
                        frozenset(values[4]), days_star=parts[2].startswith("*"),
                        weekdays_star=parts[4].startswith("*"))


def _field_values(text: str, index: int, expr: str) -> set[int]:
    spec = CRON_FIELDS[index]
    library = _croniter_values(text, index, spec, expr)
    values: set[int] = set()
    for item in text.split(","):
        values |= _item_values(item, spec, expr)
    if spec.name == "day of week":  # 7 is Sunday too
        values, library = {v % 7 for v in values}, {v % 7 for v in library}
    if values != library:
        raise _bad(expr, spec, text, f"croniter reads it as {_listed(library)} and cron as {_listed(values)}; "
                   "write it another way (e.g. as a list)")
    return values


def _item_values(item: str, spec: CronField, expr: str) -> set[int]:
    """What cron (Vixie cron, cronie) runs for one item of a field."""
    match = CRON_ITEM.fullmatch(item)
    if not match:
        raise _bad(expr, spec, item, "not a number, name, *, range or step" + _extension_note(item))
    step = int(match["step"]) if match["step"] else 1
    if match["star"]:
        low, high = spec.low, spec.high
    else:
        low = _value(match["low"], spec, expr, item)
        if match["high"] is None and match["step"]:
            raise _bad(expr, spec, item, f"a step needs * or a range before it (crons read {item} differently): "
                       f"write {match['low']}-{spec.high}/{step}")
        high = _value(match["high"], spec, expr, item) if match["high"] else low
    if low > high:
        raise _bad(expr, spec, item, f"range {low}-{high} runs backwards")
    if step < 1:
        raise _bad(expr, spec, item, "a step must be 1 or more")
    return set(range(low, high + 1, step))


def _value(text: str, spec: CronField, expr: str, item: str) -> int:
    if text.lower() in spec.names:
        return spec.low + spec.names.index(text.lower())
    if not text.isdigit():
        raise _bad(expr, spec, item, f"{quote(text)} is not a number" + (" or a name" if spec.names else ""))
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise _bad(expr, spec, item, f"{value} is outside {spec.low}-{spec.high}")
    return value


def _croniter_values(text: str, index: int, spec: CronField, expr: str) -> set[int]:
    """The field's values as croniter reads them (the field alone in an otherwise all-* expression)."""
    from croniter import CroniterError, croniter

    alone = " ".join(text if position == index else "*" for position in range(5))
    try:
        expanded = croniter.expand(alone)[0][index]
    except (CroniterError, ValueError) as exc:
        why = re.sub(r"^\[[^\]]*\]\s*", "", str(exc)) or exc.__class__.__name__
        raise _bad(expr, spec, text, f"croniter: {why}" + _extension_note(text)) from None
    if expanded == ["*"]:
        return set(range(spec.low, spec.high + 1))
    if not all(isinstance(value, int) for value in expanded):
        raise _bad(expr, spec, text, "not a number, name, *, range or step" + _extension_note(text))
    return set(expanded)


def _extension_note(item: str) -> str:
    if any(mark in item.upper() for mark in ("L", "W", "#", "?", "H")):
        return " (L, W, #, ? and H are extensions /etc/cron.d does not run)"
    return ""


def _listed(values: set[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def _bad(expr: str, spec: CronField, item: str, why: str) -> InvalidInput:
    return InvalidInput(f"--cron {quote(expr)}: {spec.name} field {quote(item)}: {why}")


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
    return paths.home_path() / "bench" / f"schedule-{name}.lock"


def log_file(name: str) -> Path:
    return paths.home_path() / "bench" / f"schedule-{name}.log"


def _environment() -> dict[str, str]:
    """What the scheduled run needs from this shell: where astrostack keeps its files."""
    return {"ASTROSTACK_HOME": str(paths.home_path())}


def _prepare_bench_folder() -> None:
    """The folder of the lock and log files, made when the schedule is installed (not on --dry-run)."""
    paths.subdir("bench")


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
    _prepare_bench_folder()
    write_files(files)
    return files


def cron_available() -> bool:
    return CRON_DIR.is_dir() and any(shutil.which(daemon) for daemon in ("cron", "crond"))


# systemd --------------------------------------------------------------------------


def on_calendar(expr: str) -> str:
    """The cron expression as a systemd ``OnCalendar=`` value that fires exactly when cron would."""
    cron = parse_cron(expr)
    every_weekday = frozenset(range(7))
    if not cron.days_star and not cron.weekdays_star:
        raise InvalidInput(f"--cron {quote(expr)}: restricts both day of month and day of week; cron runs on either, "
                           "systemd only on both", hint="use one of the two, or cron instead of --systemd")
    weekday_part = ("" if cron.weekdays == every_weekday
                    else ",".join(SYSTEMD_WEEKDAYS[d] for d in sorted(cron.weekdays)) + " ")
    date = f"*-{_calendar_list(cron.months, range(1, 13))}-{_calendar_list(cron.days, range(1, 32))}"
    time_of_day = f"{_calendar_list(cron.hours, range(24))}:{_calendar_list(cron.minutes, range(60))}:00"
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
    _prepare_bench_folder()
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
            raise ScheduleError(f"cannot write {show_path(scheduled.path)}: permission denied",
                                hint="run as root, or --dry-run to see the entry") from None
        except OSError as exc:
            raise InvalidInput(f"cannot write {show_path(scheduled.path)}: {exc.strerror or exc}") from None
