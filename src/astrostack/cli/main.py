"""The `astrostack` command. Errors are caught here, once, and turned into
one line on stderr and a documented exit code (README, "Exit codes"); with
``--json`` the error is also a JSON object on stdout; an error nobody
foresaw is the same one line plus a hint to rerun with ``--debug``, which
shows its traceback.

Commands load lazily: ``astrostack --version`` and ``--help`` import no
command module (openstacksdk, docker and matplotlib take about half a
second). ``--help`` reads the commands' names and help texts from their
modules' source; running a command imports only its own module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import sys
import traceback
from difflib import get_close_matches
from functools import cache
from typing import Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.26 vendors click; older releases depend on it
    from typer import _click as click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    import click
    from click import exceptions as click_errors

from astrostack import __version__
from astrostack.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID_INPUT, AstrostackError, one_line

# Where the commands live, in the order `--help` lists them: modules whose
# register(root) adds top-level commands, then the command groups.
COMMAND_MODULES = ("spec_cmds", "cluster_cmds", "access_cmds", "job_cmds", "taskqueue_cmds")
GROUP_MODULES = {"spec": "spec_cmds", "local": "local_cmds", "image": "image_cmds", "bench": "bench_cmds"}
DEBUG_HINT = "rerun with --debug for the traceback"

_run_state = {"debug": False}


# Lazy commands ------------------------------------------------------------------------


class LazyGroup(TyperGroup):
    """The root group: knows its commands by name, imports one only to run it (or show its own help)."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(dict.fromkeys([*self.commands, *lazy_commands()]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in lazy_commands():
            return None
        if self._listing:
            return TyperCommand(cmd_name, help=lazy_commands()[cmd_name].help)
        self.commands[cmd_name] = command = load_command(cmd_name)
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click_errors.UsageError as exc:
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if matches and "Did you mean" not in exc.message:
                exc.message = f"{exc.message.rstrip('.')}. Did you mean {', '.join(repr(m) for m in matches)}?"
            raise


class LazyCommand:
    """Where a command lives and its help, read from the module's source."""

    def __init__(self, module: str, group: bool, help: str):  # noqa: A002 (click's word)
        self.module = module
        self.group = group
        self.help = help


@cache
def lazy_commands() -> dict[str, LazyCommand]:
    """Every top-level command and group, in help order, without importing their modules."""
    found: dict[str, LazyCommand] = {}
    for module in COMMAND_MODULES:
        for name, help_text in _registered_commands(module).items():
            found[name] = LazyCommand(module, False, help_text)
    for name, module in GROUP_MODULES.items():
        found[name] = LazyCommand(module, True, _group_help(module))
    return found


def load_command(name: str) -> click.Command:
    """The real click command NAME (its module imported now)."""
    entry = lazy_commands()[name]
    module = importlib.import_module(f"astrostack.cli.{entry.module}")
    if entry.group:
        command = typer.main.get_command(module.app)
        command.name = name
        return command
    holder = typer.Typer()
    holder.callback()(_no_options)
    module.register(holder)
    return typer.main.get_command(holder).commands[name]


def _no_options() -> None:
    """(holds the commands a module registers)"""


def _module_tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(f"astrostack.cli.{module}")
    if spec is None or not spec.origin:
        raise AstrostackError(f"astrostack.cli.{module} is missing from this installation")
    with open(spec.origin, encoding="utf-8") as handle:
        return ast.parse(handle.read(), spec.origin)


def _registered_commands(module: str) -> dict[str, str]:
    """name -> help of what MODULE's register(root) adds: `root.command("NAME")(FUNCTION)` calls,
    or a {"NAME": FUNCTION} dict that a loop registers. Anything else: the module is imported."""
    tree = _module_tree(module)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    register = functions.get("register")
    names: dict[str, str] = {}
    for node in ast.walk(register) if register else ():
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Call) and _is_command_call(node.func):
            name, target = node.func.args[0], node.args[0] if node.args else None
            if isinstance(name, ast.Constant) and isinstance(target, ast.Name):
                names[name.value] = target.id
        elif isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
            names.update({k.value: v.id for k, v in zip(node.keys, node.values) if isinstance(v, ast.Name)})
    if not names or not all(target in functions for target in names.values()):
        return _imported_commands(module)
    return {name: ast.get_docstring(functions[target]) or "" for name, target in names.items()}


def _is_command_call(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr == "command" and bool(call.args)


def _imported_commands(module: str) -> dict[str, str]:
    holder = typer.Typer()
    holder.callback()(_no_options)
    importlib.import_module(f"astrostack.cli.{module}").register(holder)
    group = typer.main.get_command(holder)
    return {name: command.help or "" for name, command in group.commands.items()}


def _group_help(module: str) -> str:
    """The help= of MODULE's `app = typer.Typer(help=...)`."""
    for node in _module_tree(module).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "app" for t in node.targets)
                and isinstance(node.value, ast.Call)):
            for keyword in node.value.keywords:
                if keyword.arg == "help" and isinstance(keyword.value, ast.Constant):
                    return str(keyword.value.value)
    return typer.main.get_command(importlib.import_module(f"astrostack.cli.{module}").app).help or ""


# The app ------------------------------------------------------------------------------


app = typer.Typer(
    name="astrostack",
    cls=LazyGroup,
    help="Containerized MPI clusters for radio astronomy on OpenStack (or on this machine).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"astrostack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="On an error, also show its traceback; show the libraries' warnings too."),
) -> None:
    """astrostack: spec -> Heat stack -> cluster -> job / bench."""
    _run_state["debug"] = debug
    _route_library_logs(debug)


class _CommandLogs(logging.StreamHandler):
    """The root logger's handler while a command runs: astrostack's own warnings (a
    retry, and when) on stderr as they are; the libraries' (keystoneauth's "Failed to
    discover available identity versions ..." before every retry of an unreachable
    cloud) only with --debug, named: astrostack says what went wrong in its own line."""

    def __init__(self, debug: bool) -> None:
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s" if debug else "%(message)s"))
        if not debug:
            self.addFilter(lambda record: record.name.split(".", 1)[0] == "astrostack")


def _route_library_logs(debug: bool) -> None:
    _unroute_logs()
    logging.getLogger().addHandler(_CommandLogs(debug))


def _unroute_logs() -> None:
    """The command's handler goes with the command (main() may run again in this process)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CommandLogs)]:
        root.removeHandler(handler)


# The error boundary ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map every error to an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _run_state["debug"] = False
    as_json = wants_json(args)
    try:
        return _run_app(args, as_json)
    finally:
        _unroute_logs()


def _run_app(args: list[str], as_json: bool) -> int:
    """The error boundary: every error becomes one line and its exit code."""
    try:
        result = app(args=args, standalone_mode=False, prog_name="astrostack")
    except AstrostackError as exc:
        return _fail(str(exc), exc.exit_code, as_json and not exc.json_reported, exc)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        return EXIT_INVALID_INPUT
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "astrostack"
        return _fail(f"{exc.format_message()} (see `{command} --help`)", EXIT_INVALID_INPUT, as_json, exc)
    except click_errors.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code or EXIT_FAILURE, as_json, exc)
    except (typer.Abort, KeyboardInterrupt) as exc:
        return _fail("interrupted", EXIT_INTERRUPTED, as_json, exc)
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # the last resort: a bug, or an error no adapter turned into ours
        message = f"unexpected {type(exc).__name__}: {exc}".rstrip(": ")
        if not _run_state["debug"]:
            message += f" ({DEBUG_HINT})"
        return _fail(message, EXIT_FAILURE, as_json, exc)
    if result == EXIT_INTERRUPTED:  # Typer turns Ctrl-C into this return value
        return _fail("interrupted", EXIT_INTERRUPTED, as_json, KeyboardInterrupt())
    return result if isinstance(result, int) else 0


def wants_json(args: list[str]) -> bool:
    """--json before any `--` (what follows `--` is a job's or a command's own argv)."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _fail(message: str, code: int, as_json: bool, exc: BaseException) -> int:
    if _run_state["debug"] and not isinstance(exc, (click_errors.UsageError, KeyboardInterrupt)):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    line = one_line(message)
    if as_json:
        from astrostack.cli.common import print_json

        print_json({"ok": False, "event": "error",
                    "error": {"type": type(exc).__name__, "message": line, "exit_code": code}})
    _print_error(line)
    return code


def _print_error(line: str) -> None:
    try:
        from rich.markup import escape

        from astrostack.cli.common import err_console

        err_console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    except Exception:  # noqa: BLE001 (the error line must reach the user whatever rich thinks of the terminal)
        sys.stderr.write(f"error: {line}\n")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
