"""The CLI's edge: one error boundary, exit codes from one place, --json errors,
a last-resort handler with --debug, and a start that imports no command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from astrostack import errors, spec
from astrostack.cli import main as cli
from astrostack.cli.main import main
from astrostack.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID_INPUT, InvalidInput

ROOT = Path(__file__).resolve().parents[2]
SAGECAL = ROOT / "examples" / "sagecal-openstack.yaml"


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def raising(exc: BaseException):
    def schema() -> dict:
        raise exc
    return schema


# The last resort ---------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_with_a_hint_and_exit_1(capsys, monkeypatch):
    monkeypatch.setattr(spec, "json_schema", raising(ZeroDivisionError("division by zero")))

    code, _, err = run(capsys, "spec", "schema")

    assert code == EXIT_FAILURE
    assert one_error_line(err) == ("error: unexpected ZeroDivisionError: division by zero "
                                   "(rerun with --debug for the traceback)")


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setattr(spec, "json_schema", raising(ZeroDivisionError("division by zero")))

    code, _, err = run(capsys, "--debug", "spec", "schema")

    assert code == EXIT_FAILURE
    assert err.startswith("Traceback (most recent call last):") and "ZeroDivisionError" in err
    assert err.splitlines()[-1] == "error: unexpected ZeroDivisionError: division by zero"


def test_debug_is_forgotten_by_the_next_run(capsys, monkeypatch):
    monkeypatch.setattr(spec, "json_schema", raising(ZeroDivisionError("x")))
    run(capsys, "--debug", "spec", "schema")

    _, _, err = run(capsys, "spec", "schema")
    assert "Traceback" not in err


def test_ctrl_c_is_exit_130(capsys, monkeypatch):
    monkeypatch.setattr(spec, "json_schema", raising(KeyboardInterrupt()))

    code, _, err = run(capsys, "spec", "schema")
    assert (code, one_error_line(err)) == (EXIT_INTERRUPTED, "error: interrupted")


def test_an_error_line_never_carries_terminal_escapes_or_newlines(capsys, monkeypatch):
    monkeypatch.setattr(spec, "json_schema", raising(InvalidInput("bad\nline \x1b[2J\x07 [red]x[/red] :smile:")))

    code, _, err = run(capsys, "spec", "schema")

    assert code == EXIT_INVALID_INPUT
    assert one_error_line(err) == "error: bad\\nline \\x1b[2J\\x07 [red]x[/red] :smile:"


def test_an_error_line_has_a_bounded_length(capsys, monkeypatch):
    monkeypatch.setattr(spec, "json_schema", raising(InvalidInput("x" * 100_000)))

    _, _, err = run(capsys, "spec", "schema")
    assert len(one_error_line(err)) <= len("error: ") + errors.MAX_ERROR_LINE


# --json ----------------------------------------------------------------------------------


def test_a_json_command_reports_its_error_as_json_on_stdout_too(capsys, tmp_path):
    code, out, err = run(capsys, "validate", tmp_path / "nope.yaml", "--json")

    assert code == EXIT_INVALID_INPUT
    answer = json.loads(out)
    assert answer["ok"] is False and answer["error"]["exit_code"] == EXIT_INVALID_INPUT
    assert answer["error"]["message"] == f"{tmp_path / 'nope.yaml'}: no such YAML file"
    assert one_error_line(err) == f"error: {answer['error']['message']}"


def test_a_usage_error_of_a_json_command_is_json_too(capsys):
    code, out, _ = run(capsys, "render", "--json")

    assert code == EXIT_INVALID_INPUT
    assert json.loads(out)["error"]["type"] == "MissingParameter"


def test_failed_checks_are_one_json_document(capsys, monkeypatch):
    from astrostack import validate

    monkeypatch.setattr(validate, "_shellcheck", lambda folder: (["SC2086: quote this"], None))

    code, out, err = run(capsys, "validate", SAGECAL, "--json")

    assert code == EXIT_INVALID_INPUT
    answer = json.loads(out)  # one document: the report, carrying the error
    assert answer["ok"] is False and "SC2086" in answer["error"]["message"]
    assert "1 check(s) failed" in one_error_line(err)


def test_json_after_a_double_dash_is_the_commands_own():
    assert cli.wants_json(["render", "s.yaml", "--json"])
    assert not cli.wants_json(["run", "c", "--", "echo", "--json"])


# Exit codes ----------------------------------------------------------------------------


def test_the_readme_exit_code_table_is_the_one_in_errors_py():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(row.split("|")[1]) for row in table.splitlines()
                  if row.startswith("|") and row.split("|")[1].strip().isdigit()}
    defined = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert documented == defined


# The data folder -------------------------------------------------------------------------


def test_a_file_shaped_home_is_one_line_exit_2(capsys, tmp_path, monkeypatch):
    (tmp_path / "home-file").write_text("x")
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home-file"))

    code, _, err = run(capsys, "bench", "schedule", ROOT / "examples" / "bench-local.yaml", "--cron", "0 3 * * *",
                       "--path", tmp_path / "cron-entry")

    assert code == EXIT_INVALID_INPUT
    assert one_error_line(err).startswith(f"error: ASTROSTACK_HOME={tmp_path / 'home-file'}: ")
    assert not (tmp_path / "cron-entry").exists()


# Start-up --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--version"], ["--help"], []])
def test_the_start_imports_no_command_and_no_heavy_library(argv):
    probe = ("import sys\nfrom astrostack.cli.main import main\nmain(%r)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "{'openstack', 'docker', 'matplotlib', 'pydantic', 'jinja2', 'cryptography'} "
             "or m.startswith('astrostack.cli.') and m != 'astrostack.cli.main'), file=sys.stderr)" % argv)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "100"})
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_help_lists_every_command_as_loading_them_would():
    from astrostack.cli.main import LazyGroup, lazy_commands, load_command

    loaded = typer_group()
    for name in lazy_commands():
        loaded.commands[name] = load_command(name)
        assert isinstance(loaded, LazyGroup)

    assert help_text(typer_group()) == help_text(loaded)
    assert list(lazy_commands()) == ["render", "validate", "up", "status", "list", "down", "scale", "rollback",
                                     "sweep", "exec", "ssh", "logs", "run", "jobs", "fetch", "connect", "spec", "local",
                                     "image", "bench"]


def typer_group():
    import typer

    return typer.main.get_command(cli.app)


def help_text(group) -> str:
    import io

    from rich.console import Console

    context = group.make_context("astrostack", ["--help"], resilient_parsing=True)
    buffer = io.StringIO()
    import typer.rich_utils as rich_utils

    original = rich_utils._get_rich_console
    rich_utils._get_rich_console = lambda stderr=False: Console(file=buffer, width=100, force_terminal=False)
    try:
        group.format_help(context, None)
    finally:
        rich_utils._get_rich_console = original
    return buffer.getvalue()


def test_a_typo_of_a_command_not_yet_loaded_gets_a_suggestion(capsys):
    code, _, err = run(capsys, "valdate", "x.yaml")
    assert code == EXIT_INVALID_INPUT and "Did you mean 'validate'?" in one_error_line(err)


@pytest.mark.parametrize(("entry", "spec_cloud", "hint"), [
    ("dead", "dead", "check the cloud's API endpoint"),
    ("astrostack-local", "local", "the local cloud is not set up or not running: `astrostack local start`"),
])
def test_a_cloud_whose_keystone_does_not_answer_is_one_line_exit_1_naming_its_url(capsys, tmp_path, monkeypatch,
                                                                                  entry, spec_cloud, hint):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(f"clouds:\n  {entry}:\n    auth:\n      auth_url: http://127.0.0.1:1/v3\n"
                      "      username: demo\n      password: not-a-secret\n      project_name: demo\n"
                      "      user_domain_name: Default\n      project_domain_name: Default\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    source = (ROOT / "examples" / "local.yaml").read_text()
    spec_path = tmp_path / "dead.yaml"
    spec_path.write_text(source.replace("cloud: local", f"cloud: {spec_cloud}", 1))

    code, _, err = run(capsys, "up", str(spec_path))

    *retries, last = [line for line in err.splitlines() if line.strip()]
    assert retries and all("/v3/auth/tokens: ConnectFailure, retry " in retry for retry in retries), err
    line = one_error_line(last)
    assert code == EXIT_FAILURE
    assert "http://127.0.0.1:1/v3/auth/tokens" in line and "no answer after" in line and hint in line
    assert "unexpected" not in line and "Traceback" not in err
