"""Bench input: a matrix validated whole (job included) at load and at
`bench schedule`; cron expressions validated by croniter and meaning the same
for cron and systemd; `bench report` on a missing database."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astrostack.bench import schedule
from astrostack.bench.matrix import load_matrix, matrix_from_dict
from astrostack.cli.main import main
from astrostack.errors import EXIT_INVALID_INPUT, InvalidInput

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOCAL = yaml.safe_load((EXAMPLES / "local.yaml").read_text())


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def matrix(**changes):
    data = {"name": "m", "spec": dict(LOCAL), "job": {"profile": "mpi", "command": ["true"]},
            "points": [{"hosts": 3, "nodes": 12}]}
    data.update(changes)
    return data


def refused(data) -> str:
    with pytest.raises(InvalidInput) as caught:
        matrix_from_dict(data, source="m.yaml")
    assert "\n" not in str(caught.value)
    return str(caught.value)


# The matrix, whole -------------------------------------------------------------------------


@pytest.mark.parametrize(("job", "field"), [
    ({"profile": "sagecal-mpi", "measurement_set": "sm.ms", "sky_model": "s", "cluster_file": "c"}, "ms"),
    ({"profile": "mpi"}, "command"),
    ({"profile": "mpi", "command": ["x"], "args": ["-A"]}, "args"),
    ({"profile": "mpi", "command": ["x"], "np": "4"}, "np"),
    ({"profile": "mpi", "command": ["x"], "timeout_s": True}, "timeout_s"),
    ({"profile": "nope"}, "profile"),
    ({"profile": ["mpi"]}, "profile"),
])
def test_a_matrix_whose_job_the_job_schema_rejects_is_refused_at_load(job, field):
    message = refused(matrix(job=job))
    assert message.startswith("m.yaml: job: ") and f"{field}:" in message


def test_a_job_asking_for_more_ranks_than_a_point_has_is_refused():
    message = refused(matrix(job={"profile": "mpi", "command": ["x"], "np": 13}))
    assert message == "m.yaml: job: np 13 is more ranks than point 3x12 has (12)"
    assert "workers 12 (+ 1 master)" in refused(matrix(job={"profile": "sagecal-mpi", "ms": "*.ms", "sky_model": "s",
                                                            "cluster_file": "c", "workers": 12}))


def test_points_take_no_numbers_as_text():
    assert "points.0.hosts:" in refused(matrix(points=[{"hosts": "3", "nodes": 12}]))


def test_bench_schedule_refuses_a_matrix_with_a_bad_job_and_installs_nothing(tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(matrix(job={"profile": "mpi", "args": ["x"]})))
    target = tmp_path / "cron.d" / "astrostack-m"

    code = main(["bench", "schedule", str(path), "--cron", "0 3 * * 1", "--path", str(target)])

    err = capsys.readouterr().err
    assert code == EXIT_INVALID_INPUT and "job:" in err and not target.exists()


def test_bench_schedule_refuses_standard_input(capsys):
    code = main(["bench", "schedule", "-", "--cron", "0 3 * * 1", "--dry-run"])
    assert code == EXIT_INVALID_INPUT and "needs a matrix file, not -" in capsys.readouterr().err


def test_a_matrix_reads_from_standard_input(monkeypatch):
    import io
    import sys

    text = yaml.safe_dump(matrix(spec=str(EXAMPLES / "local.yaml")))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert load_matrix("-").name == "m"


# bench report ------------------------------------------------------------------------------


def test_report_on_a_missing_database_says_so_and_creates_nothing(tmp_path, capsys):
    code = main(["bench", "report", "--db", str(tmp_path / "nope.sqlite")])

    err = capsys.readouterr().err
    assert code == EXIT_INVALID_INPUT
    assert err.startswith(f"error: {tmp_path / 'nope.sqlite'}: no such bench database")
    assert not (tmp_path / "nope.sqlite").exists()


def test_report_without_any_run_says_there_is_no_database(home, capsys):
    code = main(["bench", "report"])

    assert code == EXIT_INVALID_INPUT and "no such bench database" in capsys.readouterr().err
    assert not home.exists()


@pytest.mark.parametrize("make", ["directory", "text"])
def test_report_on_something_that_is_no_database_is_one_line(tmp_path, capsys, make):
    target = tmp_path / "db"
    if make == "directory":
        target.mkdir()
    else:
        target.write_text("not sqlite at all, just text that is long enough to be read as a header" * 4)

    code = main(["bench", "report", "--db", str(target)])
    err = capsys.readouterr().err
    assert code == EXIT_INVALID_INPUT and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# Cron ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "why"), [
    ("\u0663 * * * *", "ASCII"),                         # an Arabic-Indic 3
    ("0 \uff13 * * *", "ASCII"),                          # a fullwidth 3
    ("0 0 L * *", "extensions /etc/cron.d does not run"),
    ("0 0 * * 1#2", "extensions"),
    ("H * * * *", "extensions"),
    ("0 0 0 * * *", "5 fields"),
    ("5/15 * * * *", "a step needs * or a range before it"),
    ("0 0 * * mon-sun", "runs backwards"),
    ("0 0 * 12-1 *", "runs backwards"),
    ("0 0 * * 7-7", "croniter reads it as"),              # croniter: every day; cron: Sunday
    ("0 0 1-1 * *", "croniter reads it as"),
    ("60 * * * *", "croniter: is not acceptable, out of range"),
    ("*/0 * * * *", "croniter: step '0'"),
    ("0 0\n* * *", "ASCII"),
])
def test_cron_expressions_cron_would_not_run_alike_are_refused(expr, why):
    with pytest.raises(InvalidInput) as caught:
        schedule.parse_cron(expr)
    assert why in str(caught.value) and "\n" not in str(caught.value)


def test_the_cron_line_written_is_the_expression_given(tmp_path):
    entry = schedule.cron_entry("30  2 * *   1-5", "m", EXAMPLES / "bench-local.yaml", tmp_path / "b.sqlite")
    assert entry.splitlines()[-1].startswith("30 2 * * 1-5 root ")


def test_a_star_step_day_of_month_is_anded_with_the_day_of_week_as_cron_does():
    """Vixie cron: a day field starting with * makes both day fields required, as systemd does."""
    assert schedule.on_calendar("0 0 */2 * 1") == "Mon *-*-01,03,05,07,09,11,13,15,17,19,21,23,25,27,29,31 00:00:00"


def test_both_day_fields_restricted_is_refused_for_systemd():
    with pytest.raises(InvalidInput, match="cron runs on either, systemd only on both"):
        schedule.on_calendar("0 0 1-31 * 1")


def _calendar_matches(calendar: str, moment: datetime) -> bool:
    """Whether systemd's OnCalendar value (the form on_calendar writes) fires at MOMENT."""
    parts = calendar.split()
    weekdays = parts.pop(0).split(",") if len(parts) == 3 else None
    date, time_of_day = parts
    _, months, days = date.split("-")
    hours, minutes, _ = time_of_day.split(":")

    def allows(field: str, value: int) -> bool:
        return field == "*" or value in {int(v) for v in field.split(",")}

    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    return ((weekdays is None or names[moment.weekday()] in weekdays) and allows(months, moment.month)
            and allows(days, moment.day) and allows(hours, moment.hour) and allows(minutes, moment.minute))


def _field(low: int, high: int, names: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    value = st.integers(low, high).map(str)
    if names:
        value = value | st.sampled_from(names)
    ranged = st.tuples(st.integers(low, high), st.integers(low, high)).map(lambda t: f"{min(t)}-{max(t)}")
    item = st.one_of(value, ranged.filter(lambda r: r.split("-")[0] != r.split("-")[1]),
                     st.builds(lambda s: f"*/{s}", st.integers(1, high)))
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


CRON_EXPRESSIONS = st.tuples(
    _field(0, 59), _field(0, 23), _field(1, 31), _field(1, 12, ("jan", "jun", "dec")),
    _field(0, 6, ("mon", "fri", "sun")),
).filter(lambda fields: fields[2] == "*" or fields[4] == "*").map(" ".join)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr=CRON_EXPRESSIONS, seed=st.integers(0, 2**32 - 1))
def test_the_systemd_calendar_fires_exactly_when_croniter_says_cron_does(expr, seed):
    """For expressions with a day field of *, croniter and Vixie cron agree: so the timer must too."""
    calendar = schedule.on_calendar(expr)
    randomly = random.Random(seed)
    start = datetime(2026, 1, 1)
    for _ in range(200):
        moment = start + timedelta(minutes=randomly.randrange(366 * 24 * 60))
        assert croniter.match(expr, moment) == _calendar_matches(calendar, moment), (expr, calendar, moment)
