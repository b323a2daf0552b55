"""Offline checks of a spec and of everything rendered from it.

No cloud is contacted: the spec validates, the HOT templates parse and refer
only to parameters and resources they define, every `get_file` target exists,
every user-data passes cloud-init's own schema (where cloud-init is
installed) and the host scripts pass shellcheck (where installed).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from astrostack import paths
from astrostack.errors import TemplateError
from astrostack.render import HEAT_PLACEHOLDERS, Rendered, render
from astrostack.spec import ClusterSpec

HOT_VERSION = "2018-08-31"
KNOWN_TYPES = {
    "OS::Heat::RandomString",
    "OS::Heat::ResourceGroup",
    "OS::Heat::WaitCondition",
    "OS::Heat::WaitConditionHandle",
    "OS::Nova::Server",
    "OS::Nova::KeyPair",
    "OS::Neutron::Net",
    "OS::Neutron::Subnet",
    "OS::Neutron::Router",
    "OS::Neutron::RouterInterface",
    "OS::Neutron::SecurityGroup",
    "OS::Neutron::Port",
    "OS::Neutron::FloatingIP",
    "OS::Cinder::Volume",
    "OS::Cinder::VolumeAttachment",
}
# Dummy values that stand in for what Heat fills in, for schema checks.
PLACEHOLDER_VALUES = {
    "__ASTROSTACK_SIGNAL_URL__": "http://192.0.2.1:8004/v1/signal",
    "__ASTROSTACK_SIGNAL_TOKEN__": "0123456789abcdef",
    "__ASTROSTACK_SECRET__": "s3cr3tS3cr3tS3cr3t",
    "__ASTROSTACK_NFS_IP__": "192.0.2.10",
    "__ASTROSTACK_MANAGER_IP__": "192.0.2.11",
    "__ASTROSTACK_VOLUME_ID__": "00000000-0000-0000-0000-000000000000",
    "__ASTROSTACK_HOST_ID__": "worker-0",
}
assert set(PLACEHOLDER_VALUES) == set(HEAT_PLACEHOLDERS)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    skipped: bool = False


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, problems: list[str], skipped: str | None = None) -> None:
        if skipped:
            self.checks.append(Check(name, True, skipped, skipped=True))
        elif problems:
            self.checks.append(Check(name, False, "; ".join(problems)))
        else:
            self.checks.append(Check(name, True))


def validate(spec: ClusterSpec, keep_dir: Path | None = None) -> Report:
    """Render into a temporary directory (or KEEP_DIR) and check it all."""
    report = Report([Check("spec", True, f"{spec.name}: {spec.hosts} hosts, {spec.nodes} nodes")])
    with tempfile.TemporaryDirectory(prefix="astrostack-validate-") as tmp:
        rendered = render(spec, keep_dir or Path(tmp) / spec.name, ssh_public_key="ssh-ed25519 AAAA validate")
        check_rendered(rendered, report)
    return report


def validate_matrix(data: Any, source: str, base_dir: Path = Path(".")) -> Report:
    """A bench matrix, whole: the matrix, its job and every point's spec (no render)."""
    from astrostack.bench.matrix import matrix_from_dict

    matrix = matrix_from_dict(data, source=source, base_dir=base_dir)
    report = Report([Check("matrix", True, f"{matrix.name}: {len(matrix.points)} point(s) x {matrix.repeats}"),
                     Check("job", True, f"profile {matrix.job.get('profile', 'mpi')}")])
    for point in matrix.points:
        spec = matrix.point_spec(point)
        report.checks.append(Check(f"point {point.label}", True, f"{spec.name}: {spec.hosts} hosts, {spec.nodes} nodes"))
    return report


def validate_job(data: Any, source: str) -> Report:
    """A job file."""
    from astrostack.job import job_from_dict

    job = job_from_dict(data, source=source)
    return Report([Check("job", True, f"profile {job.profile}")])


def check_rendered(rendered: Rendered, report: Report) -> None:
    environment = yaml.safe_load(rendered.environment.read_text())
    registry = environment.get("resource_registry", {})
    templates = _templates(rendered, registry)
    for path, template in templates.items():
        report.add(f"template {path.relative_to(rendered.directory)}", template_problems(path, template, registry))
    report.add("environment", environment_problems(templates[rendered.template], environment))
    for role, path in rendered.user_data.items():
        text = fill_placeholders(path.read_text())
        report.add(f"user-data {role} (cloud-init schema)", *_cloud_init_schema(text))
    report.add("host scripts (shellcheck)", *_shellcheck(paths.cloud_init_dir() / "scripts"))


def _templates(rendered: Rendered, registry: dict[str, str]) -> dict[Path, dict[str, Any]]:
    found = {rendered.template: _load_yaml(rendered.template)}
    for target in registry.values():
        if isinstance(target, str) and target.endswith(".yaml"):
            path = rendered.directory / target
            if path.exists():
                found[path] = _load_yaml(path)
    return found


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path.name}: not valid YAML ({exc.__class__.__name__}: {getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path.name}: a HOT template is a YAML mapping")
    return data


def fill_placeholders(text: str) -> str:
    for placeholder, value in PLACEHOLDER_VALUES.items():
        text = text.replace(placeholder, value)
    return text


def walk_functions(node: Any) -> Iterator[tuple[str, Any]]:
    """Every intrinsic function call (name, argument) in a template subtree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"get_param", "get_resource", "get_attr", "get_file", "str_replace", "list_join", "if", "yaql"}:
                yield key, value
            yield from walk_functions(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_functions(item)


def template_problems(path: Path, template: dict[str, Any], registry: dict[str, str]) -> list[str]:
    problems: list[str] = []
    version = str(template.get("heat_template_version"))
    if version != HOT_VERSION:
        problems.append(f"heat_template_version is {version}, expected {HOT_VERSION}")
    parameters = template.get("parameters", {}) or {}
    resources = template.get("resources", {}) or {}
    conditions = template.get("conditions", {}) or {}
    used_params: set[str] = set()
    for name, resource in resources.items():
        problems += _resource_problems(path, name, resource, resources, parameters, conditions, registry, used_params)
    for fn, arg in walk_functions(template.get("outputs", {})):
        problems += _reference_problems(fn, arg, "outputs", resources, parameters, path)
        if fn == "get_param":
            used_params.add(_first(arg))
    for fn, arg in walk_functions(conditions):
        if fn == "get_param":
            used_params.add(_first(arg))
    unused = sorted(set(parameters) - used_params)
    if unused:
        problems.append(f"parameters defined but never used: {', '.join(unused)}")
    return problems


def _resource_problems(path, name, resource, resources, parameters, conditions, registry, used_params) -> list[str]:
    problems = []
    rtype = resource.get("type")
    if rtype not in KNOWN_TYPES and rtype not in registry:
        problems.append(f"resource {name}: unknown type {rtype}")
    condition = resource.get("condition")
    if condition and condition not in conditions:
        problems.append(f"resource {name}: undefined condition {condition}")
    depends = resource.get("depends_on", [])
    for dep in [depends] if isinstance(depends, str) else depends:
        if dep not in resources:
            problems.append(f"resource {name}: depends_on undefined resource {dep}")
    for fn, arg in walk_functions(resource.get("properties", {})):
        problems += _reference_problems(fn, arg, f"resource {name}", resources, parameters, path)
        if fn == "get_param":
            used_params.add(_first(arg))
        if fn == "if" and arg[0] not in conditions:
            problems.append(f"resource {name}: `if` on undefined condition {arg[0]}")
    return problems


def _first(arg: Any) -> str:
    return arg[0] if isinstance(arg, list) else arg


def _reference_problems(fn: str, arg: Any, where: str, resources, parameters, path: Path) -> list[str]:
    if fn == "get_param" and _first(arg) not in parameters:
        return [f"{where}: get_param of undefined parameter {_first(arg)}"]
    if fn in ("get_resource", "get_attr") and _first(arg) not in resources:
        return [f"{where}: {fn} of undefined resource {_first(arg)}"]
    if fn == "get_file" and not (path.parent / arg).is_file():
        return [f"{where}: get_file target {arg} is missing"]
    return []


def environment_problems(template: dict[str, Any], environment: dict[str, Any]) -> list[str]:
    defined = template.get("parameters", {}) or {}
    given = environment.get("parameters", {}) or {}
    problems = [f"parameter {p} is not defined by cluster.yaml" for p in sorted(set(given) - set(defined))]
    missing = [p for p, d in defined.items() if "default" not in d and p not in given]
    problems += [f"required parameter {p} has no value" for p in missing]
    return problems


def _run_tool(argv: list[str], missing_note: str) -> tuple[list[str], str | None]:
    if shutil.which(argv[0]) is None:
        return [], missing_note
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        return lines[-5:] or [f"{argv[0]} exited {result.returncode}"], None
    return [], None


def _cloud_init_schema(text: str) -> tuple[list[str], str | None]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(text)
    try:
        return _run_tool(["cloud-init", "schema", "--config-file", handle.name],
                         "skipped: cloud-init is not installed")
    finally:
        Path(handle.name).unlink()


def _shellcheck(folder: Path) -> tuple[list[str], str | None]:
    scripts = sorted(str(p) for p in folder.glob("*.sh"))
    return _run_tool(["shellcheck", "-x", "-P", str(folder), *scripts],
                     "skipped: shellcheck is not installed")

