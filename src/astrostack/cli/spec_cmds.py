"""`astrostack spec ...`, `render` and `validate`: offline work on a spec.

Offline means offline: none of these contacts a cloud, makes a key or writes
to astrostack's data folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from astrostack.cli.common import print_json, spec_from_path, warn
from astrostack.errors import InvalidInput, TemplateError, show_path

app = typer.Typer(help="Write and inspect cluster specs.", no_args_is_help=True)

SPEC_HELP = "Cluster spec (YAML); - reads it from standard input."


@app.command("init")
def spec_init(
    path: Path = typer.Argument(Path("cluster.yaml"), help="File to write."),
    name: str = typer.Option("my-cluster", help="Cluster name."),
    cloud: str = typer.Option("local", help="`local` or a clouds.yaml cloud name."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write an annotated starting spec."""
    from astrostack.cli.common import console
    from astrostack.spec import starter_spec

    if path.exists() and not force:
        raise InvalidInput(f"{show_path(path)} exists (use --force to overwrite)")
    try:
        path.write_text(starter_spec(name=name, cloud=cloud, filename=str(path)))
    except OSError as exc:
        raise InvalidInput(f"{show_path(path)}: cannot write ({exc.strerror or exc})") from None
    console.print(f"wrote {show_path(path)}; next: astrostack validate {show_path(path)}", highlight=False,
                  markup=False)


@app.command("schema")
def spec_schema() -> None:
    """Print the spec's JSON Schema."""
    from astrostack.spec import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command("show")
def spec_show(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    field: str = typer.Option("", help="Print one field (dotted path, e.g. name or overlay.subnet)."),
) -> None:
    """Print the spec with every default filled in (or one field of it)."""
    import yaml

    data = spec_from_path(spec).model_dump(mode="json")
    if not field:
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return
    value: Any = data
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            from astrostack.errors import quote

            raise InvalidInput(f"--field: the spec has no field {quote(field)}")
        value = value[part]
    print(value if not isinstance(value, (dict, list)) else json.dumps(value))


def register(root: typer.Typer) -> None:
    root.command("render")(render)
    root.command("validate")(validate)


def render(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    out: Path = typer.Option(..., "-o", "--out", help="Directory to write cluster.yaml, environment.yaml, lib/ and "
                             "user-data/ into; files a render did not write there are never overwritten."),
    ssh_public_key: Optional[Path] = typer.Option(
        None, "--ssh-public-key", help="Public key (e.g. ~/.ssh/id_ed25519.pub) for the servers, when the spec "
        "names no ssh.keypair; without it environment.yaml has no key (`up` makes one of its own)."),
    as_json: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
) -> None:
    """Render the Heat stack: `openstack stack create -t OUT/cluster.yaml -e OUT/environment.yaml NAME` accepts it."""
    from astrostack.cli.common import console
    from astrostack.render import render as render_stack

    cluster = spec_from_path(spec)
    public_key = _public_key(ssh_public_key) if ssh_public_key is not None else ""
    if ssh_public_key is not None and cluster.ssh.keypair:
        raise InvalidInput(f"--ssh-public-key: the spec names ssh.keypair {cluster.ssh.keypair!r}; give one or "
                           "the other")
    rendered = render_stack(cluster, out, ssh_public_key=public_key)
    if not cluster.ssh.keypair and not public_key:
        warn(f"{show_path(rendered.environment)} gives the servers no SSH key: pass --ssh-public-key FILE, or "
             "set ssh.keypair (`astrostack up` makes a key of its own)")
    files = [str(p) for p in rendered.files()]
    if as_json:
        print_json({"directory": str(rendered.directory), "files": files})
        return
    for name in files:
        console.print(name, highlight=False, markup=False)
    console.print(
        f"openstack stack create -t {rendered.template} -e {rendered.environment} {cluster.name}",
        highlight=False, markup=False,
    )


def _public_key(path: Path) -> str:
    """The one OpenSSH public key line in PATH."""
    from astrostack.yamlio import read_text

    lines = [line.strip() for line in read_text(path, "public key").splitlines() if line.strip()]
    fields = lines[0].split() if len(lines) == 1 else []
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-sha2-", "sk-")) or not fields[1].isascii():
        raise InvalidInput(f"--ssh-public-key {show_path(path)}: not one OpenSSH public key line "
                           "(e.g. ssh-ed25519 AAAA... you@host)")
    return " ".join(fields[:3])


def validate(
    file: str = typer.Argument(..., metavar="FILE", help="Cluster spec, bench matrix or job file (YAML); - reads "
                               "standard input."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Offline checks of a spec (templates, cloud-init schema, shellcheck), a bench matrix or a job.

    A bench matrix: the matrix, its job and every point's spec. A job file: the job."""
    from astrostack.cli.common import console

    report = _validate_file(file)
    if as_json:
        answer: dict[str, Any] = {"ok": report.ok, "checks": [c.__dict__ for c in report.checks]}
    else:
        for check in report.checks:
            mark = "[yellow]skip[/yellow]" if check.skipped else ("[green]ok[/green]" if check.ok else "[red]FAIL[/red]")
            detail = f": {check.detail}" if check.detail else ""
            console.print(f"{mark:>20} {_escaped(check.name + detail)}", highlight=False)
    failures = report.failures()
    error = None
    if failures:
        error = TemplateError(f"{len(failures)} check(s) failed, first: {failures[0].name}: {failures[0].detail}")
    if as_json:
        if error is not None:
            answer["error"] = {"type": type(error).__name__, "message": str(error), "exit_code": error.exit_code}
            error.json_reported = True
        print_json(answer)
    if error is not None:
        raise error


def _escaped(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _validate_file(file: str):  # -> validate.Report
    """Check FILE as what it is: a matrix has `points`, a job a `profile`, anything else is a spec."""
    from astrostack import validate as checks
    from astrostack.spec import spec_from_data
    from astrostack.yamlio import STDIN, read_yaml

    source = "<stdin>" if file == STDIN else show_path(file)
    data = read_yaml(file, "YAML")
    kind = _kind(data)
    if kind == "matrix":
        return checks.validate_matrix(data, source, base_dir=Path(".") if file == STDIN else Path(file).parent)
    if kind == "job":
        return checks.validate_job(data, source)
    cluster = spec_from_data(data, source)
    for message in cluster.warnings():
        warn(message)
    return checks.validate(cluster)


def _kind(data: Any) -> str:
    if isinstance(data, dict) and "points" in data:
        return "matrix"
    if isinstance(data, dict) and "profile" in data:
        return "job"
    return "spec"
