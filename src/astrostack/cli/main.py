"""The `astrostack` command. Errors are caught here, once, and turned into
one line on stderr and a documented exit code (README, "Exit codes")."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.26 vendors click; older releases depend on it
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from rich.markup import escape

from astrostack import __version__
from astrostack.cli import access_cmds, bench_cmds, cluster_cmds, image_cmds, job_cmds, local_cmds, spec_cmds
from astrostack.cli.common import err_console
from astrostack.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID_INPUT, AstrostackError

app = typer.Typer(
    name="astrostack",
    help="Containerized MPI clusters for radio astronomy on OpenStack (or on this machine).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(spec_cmds.app, name="spec")
app.add_typer(local_cmds.app, name="local")
app.add_typer(image_cmds.app, name="image")
app.add_typer(bench_cmds.app, name="bench")
spec_cmds.register(app)
cluster_cmds.register(app)
access_cmds.register(app)
job_cmds.register(app)


def _version(value: bool) -> None:
    if value:
        print(f"astrostack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """astrostack: spec -> Heat stack -> cluster -> job / bench."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map every error to an exit code."""
    try:
        result = app(args=argv, standalone_mode=False, prog_name="astrostack")
    except AstrostackError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return _exit(exc.exit_code)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        return _exit(EXIT_INVALID_INPUT)
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "astrostack"
        err_console.print(f"[red]error:[/red] {escape(exc.format_message())} (see `{command} --help`)", highlight=False, soft_wrap=True)
        return _exit(EXIT_INVALID_INPUT)
    except click_errors.ClickException as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
        return _exit(exc.exit_code or EXIT_FAILURE)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return _exit(EXIT_INTERRUPTED)
    except typer.Exit as exc:
        return _exit(exc.exit_code)
    return _exit(result if isinstance(result, int) else 0)


def _exit(code: int) -> int:
    return code


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
