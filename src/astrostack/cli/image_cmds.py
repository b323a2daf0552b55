"""`astrostack image ...`: build the project's images and push them to a registry."""

from __future__ import annotations

import typer

from astrostack.cli.common import console, print_json
from astrostack.errors import InvalidInput, quote

app = typer.Typer(help="Build images (images/NAME) with the docker SDK and push them to a private registry.",
                  no_args_is_help=True)


@app.command("build")
def build(
    names: list[str] = typer.Argument(..., help="Image recipes under images/: vm, mpi-base, sagecal, dask."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the build log."),
    as_json: bool = typer.Option(False, "--json", help="Print the digests as JSON."),
) -> None:
    """Build images (the Debian base first, from Debian's mirror, when missing)."""
    from astrostack import images  # the docker SDK: only when building

    available = images.recipes()
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InvalidInput(f"no image recipe {quote(unknown[0])}; known: {', '.join(available)}")
    progress = (lambda line: console.print(line, highlight=False, markup=False)) if verbose else None
    images.ensure_base_image(progress)
    digests = {}
    for name in names:
        if not as_json:
            console.print(f"building astrostack/{name}:latest", highlight=False)
        digests[f"astrostack/{name}:latest"] = images.build(name, progress)
    if as_json:
        print_json(digests)
    else:
        for tag, digest in digests.items():
            console.print(f"{tag} {digest}", highlight=False)


@app.command("push")
def push(
    name: str = typer.Argument(..., help="Image, e.g. mpi-base or astrostack/mpi-base:latest."),
    registry: str = typer.Option(..., "--registry", help="host:port of the registry."),
) -> None:
    """Tag NAME for REGISTRY and push it; prints the pushed reference and digest."""
    from astrostack import images

    reference, digest = images.push(name, registry)
    console.print(f"pushed {reference} {digest}", highlight=False)
