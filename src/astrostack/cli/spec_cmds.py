"""`astrostack spec ...`, `render` and `validate`: offline work on a spec."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from astrostack import keys
from astrostack.cli.common import console, print_json, spec_from_path
from astrostack.errors import InvalidInput, TemplateError
from astrostack.render import render as render_stack
from astrostack.spec import json_schema, starter_spec
from astrostack.validate import validate as validate_spec

app = typer.Typer(help="Write and inspect cluster specs.", no_args_is_help=True)


@app.command("init")
def spec_init(
    path: Path = typer.Argument(Path("cluster.yaml"), help="File to write."),
    name: str = typer.Option("my-cluster", help="Cluster name."),
    cloud: str = typer.Option("local", help="`local` or a clouds.yaml cloud name."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write an annotated starting spec."""
    if path.exists() and not force:
        raise InvalidInput(f"{path} exists (use --force to overwrite)")
    try:
        path.write_text(starter_spec(name=name, cloud=cloud, filename=str(path)))
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot write ({exc.strerror or exc})") from None
    console.print(f"wrote {path}; next: astrostack validate {path}")


@app.command("schema")
def spec_schema() -> None:
    """Print the spec's JSON Schema."""
    print(json.dumps(json_schema(), indent=2))


@app.command("show")
def spec_show(
    spec: str = typer.Argument(..., help="Cluster spec (YAML)."),
    field: str = typer.Option("", help="Print one field (dotted path, e.g. name or overlay.subnet)."),
) -> None:
    """Print the spec with every default filled in (or one field of it)."""
    data = spec_from_path(spec).model_dump(mode="json")
    if not field:
        print(yaml.safe_dump(data, sort_keys=False), end="")
        return
    value = data
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            raise InvalidInput(f"--field: the spec has no field {field!r}")
        value = value[part]
    print(value if not isinstance(value, (dict, list)) else json.dumps(value))


def register(root: typer.Typer) -> None:
    root.command("render")(render)
    root.command("validate")(validate)


def render(
    spec: str = typer.Argument(..., help="Cluster spec (YAML)."),
    out: Path = typer.Option(..., "-o", "--out", help="Directory to write cluster.yaml, environment.yaml, lib/ and user-data/ into."),
    as_json: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
) -> None:
    """Render the Heat stack: `openstack stack create -t OUT/cluster.yaml -e OUT/environment.yaml NAME` accepts it."""
    cluster = spec_from_path(spec)
    public_key = "" if cluster.ssh.keypair else keys.ensure_cluster_key(cluster.name)[1]
    rendered = render_stack(cluster, out, ssh_public_key=public_key)
    files = [str(p) for p in rendered.files()]
    if as_json:
        print_json({"directory": str(rendered.directory), "files": files})
        return
    for name in files:
        console.print(name, highlight=False)
    console.print(
        f"openstack stack create -t {rendered.template} -e {rendered.environment} {cluster.name}",
        highlight=False,
    )


def validate(
    spec: str = typer.Argument(..., help="Cluster spec (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Offline checks: spec, templates, cloud-init schema, shellcheck."""
    report = validate_spec(spec_from_path(spec))
    if as_json:
        print_json({"ok": report.ok, "checks": [c.__dict__ for c in report.checks]})
    else:
        for check in report.checks:
            mark = "[yellow]skip[/yellow]" if check.skipped else ("[green]ok[/green]" if check.ok else "[red]FAIL[/red]")
            console.print(f"{mark:>20} {check.name}" + (f": {check.detail}" if check.detail else ""), highlight=False)
    failures = report.failures()
    if failures:
        raise TemplateError(f"{len(failures)} check(s) failed, first: {failures[0].name}: {failures[0].detail}")
