"""The local cloud's config files, rendered from Jinja2 templates (package data).

Every file is written at every ``local start`` from ``templates/*.j2`` with
``StrictUndefined`` (a missing value is an error, not an empty string), into
``LOCAL/etc/<service>/``. Which settings are there and why:
``docs/local-cloud.md`` and ``LOCAL-CLOUD-FACTS.md``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import jinja2

from astrostack.errors import LocalCloudError
from astrostack.local import credentials, install, layout

Progress = Callable[[str], None]

COMPUTE_DRIVER_ENV = "ASTROSTACK_LOCAL_COMPUTE_DRIVER"
CONTAINER_DRIVER = "astrostack_localcloud.nova.driver.ContainerDriver"
# A real single-node driver identity, no VM (the plain FakeDriver invents a node per start).
FAKE_DRIVER = "fake.FakeDriverWithoutFakeNodes"
NOVA_SHIM_MODULE = "astrostack_driver"
HEAT_CONVERGENCE_ENV = "ASTROSTACK_LOCAL_HEAT_CONVERGENCE"
DEBUG_ENV = "ASTROSTACK_LOCAL_DEBUG"
# Keystone's token lifetime in seconds (its default: 3600). A test shortens it to
# see a scale-up happen after the tokens made at `up` expired.
TOKEN_LIFETIME_ENV = "ASTROSTACK_LOCAL_TOKEN_LIFETIME"
DEFAULT_TOKEN_LIFETIME_S = 3600
DB_NAMES = {"keystone": "keystone", "placement": "placement", "glance": "glance", "nova": "nova",
            "nova_api": "nova_api", "nova_cell0": "nova_cell0", "neutron": "neutron",
            "cinder": "cinder", "heat": "heat"}
# Nova's three databases belong to the `nova` database user.
DB_OWNER = {"nova_api": "nova", "nova_cell0": "nova"}

# (template, service folder, file name, extra context)
RENDERED = (
    ("keystone.conf.j2", "keystone", "keystone.conf", {}),
    ("placement.conf.j2", "placement", "placement.conf", {}),
    ("glance-api.conf.j2", "glance", "glance-api.conf", {}),
    ("nova.conf.j2", "nova", "nova.conf", {"with_database": True}),
    ("nova.conf.j2", "nova", "nova-compute.conf", {"with_database": False}),
    ("neutron.conf.j2", "neutron", "neutron.conf", {}),
    ("ml2_conf.ini.j2", "neutron", "ml2_conf.ini", {}),
    ("cinder.conf.j2", "cinder", "cinder.conf", {}),
    ("heat.conf.j2", "heat", "heat.conf", {}),
    ("localnet.conf.j2", "localnet", "localnet.conf", {}),
    ("my.cnf.j2", "mariadb", "my.cnf", {}),
    ("rabbitmq.conf.j2", "rabbitmq", "rabbitmq.conf", {}),
    ("registry.yml.j2", "registry", "config.yml", {}),
)
# Files the releases ship in the venv's etc/ (paste pipelines, filters, Heat's defaults).
SHIPPED = (
    ("nova", "api-paste.ini"), ("neutron", "api-paste.ini"), ("cinder", "api-paste.ini"),
    ("cinder", "resource_filters.json"), ("heat", "api-paste.ini"), ("heat", "environment.d"),
    ("heat", "templates"), ("glance", "glance-api-paste.ini"),
)
STATE_FOLDERS = ("mysql", "rabbitmq", "glance/images", "glance/staging", "glance/tasks", "glance/locks",
                 "cinder/volumes", "cinder/locks", "cinder/coordination", "nova/instances", "nova/locks",
                 "neutron/locks", "heat/locks", "net", "hv", "registry")


def db_url(database: str, secrets: dict[str, str]) -> str:
    user = DB_OWNER.get(database, database)
    return (f"mysql+pymysql://{user}:{secrets['db_' + user]}@{layout.LOOPBACK}:{layout.MARIADB_PORT}/"
            f"{DB_NAMES[database]}?charset=utf8")


def transport_url(secrets: dict[str, str]) -> str:
    return f"rabbit://astrostack:{secrets['rabbitmq']}@{layout.LOOPBACK}:{layout.RABBITMQ_PORT}/"


@dataclass(frozen=True)
class ComputeDriver:
    """The Nova virt driver in use, and why."""

    name: str
    reason: str

    def nova_setting(self, nova_virt: Path) -> str:
        """compute_driver as Nova loads it: Nova 34 always prefixes ``nova.virt.``.

        A driver of another package gets a one-line module in ``nova/virt/``
        of the OpenStack venv that imports it (``astrostack_driver.Class``).
        """
        first = self.name.split(".", 1)[0]
        if (nova_virt / f"{first}.py").exists() or (nova_virt / first).is_dir():
            return self.name
        module, _, cls = self.name.rpartition(".")
        shim = nova_virt / f"{NOVA_SHIM_MODULE}.py"
        text = (f'"""Written by `astrostack local start`: Nova loads compute drivers from nova.virt only."""\n'
                f"from {module} import {cls}  # noqa: F401\n")
        if not shim.exists() or shim.read_text() != text:
            shim.write_text(text)
        return f"{NOVA_SHIM_MODULE}.{cls}"


def choose_compute_driver(importable: Callable[[str], bool] = install.venv_can_import) -> ComputeDriver:
    """$ASTROSTACK_LOCAL_COMPUTE_DRIVER, else the container driver if the venv has it, else the fake one."""
    wanted = os.environ.get(COMPUTE_DRIVER_ENV)
    if wanted:
        return ComputeDriver(wanted, f"from {COMPUTE_DRIVER_ENV}")
    if importable(CONTAINER_DRIVER):
        return ComputeDriver(CONTAINER_DRIVER, "servers are container-VMs")
    return ComputeDriver(FAKE_DRIVER, f"{CONTAINER_DRIVER} is not importable yet: servers are records only, no VM runs")


def token_lifetime() -> int:
    value = os.environ.get(TOKEN_LIFETIME_ENV, str(DEFAULT_TOKEN_LIFETIME_S))
    if not value.isdigit() or not 60 <= int(value) <= 86400:
        raise LocalCloudError(f"{TOKEN_LIFETIME_ENV}={value!r}: seconds between 60 and 86400")
    return int(value)


def context(compute_driver: str) -> dict:
    """Everything the templates may name (StrictUndefined: nothing else)."""
    from astrostack_localcloud import naming

    secrets = credentials.load()
    return {
        "debug": "true" if os.environ.get(DEBUG_ENV) else "false",
        "service_host": layout.SERVICE_HOST,
        "region": layout.REGION,
        "api_host": layout.api_host(),
        "urls": {name: layout.api_url(name) for name in layout.API_PORTS},
        "db": {name: db_url(name, secrets) for name in DB_NAMES},
        "transport_url": transport_url(secrets),
        "secrets": secrets,
        "local": str(layout.local_dir()),
        "etc": str(layout.etc_dir()),
        "run": str(layout.run_dir()),
        "compute_driver": compute_driver,
        "heat_convergence": bool(os.environ.get(HEAT_CONVERGENCE_ENV)),
        "token_lifetime": token_lifetime(),
        "external": layout.external_net(),
        "external_bridge": naming.EXTERNAL_BRIDGE,
        "mariadb_port": layout.MARIADB_PORT,
        "rabbitmq_port": layout.RABBITMQ_PORT,
        "memcached": f"{layout.LOOPBACK}:{layout.MEMCACHED_PORT}",
        "registry_address": layout.registry_address(),
    }


def environment() -> jinja2.Environment:
    folder = Path(str(resources.files("astrostack.local") / "templates"))
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def render(template: str, values: dict) -> str:
    return environment().get_template(template).render(**values)


def rendered_files(values: dict) -> dict[Path, str]:
    """Target path -> content of every templated file."""
    etc = layout.etc_dir()
    return {etc / folder / name: render(template, {**values, **extra})
            for template, folder, name, extra in RENDERED}


def nova_virt_dir() -> Path:
    return install.venv_site_packages() / "nova" / "virt"


def write_all(compute_driver: str) -> dict[Path, str]:
    """Render and write every config file (0600: they hold passwords); copy the shipped ones."""
    for folder in STATE_FOLDERS:
        layout.state_dir(folder)
    files = rendered_files(context(compute_driver))
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        credentials.write_private(path, text)
    (layout.etc_dir("rabbitmq") / "enabled_plugins").write_text("[].\n")
    copy_shipped_files()
    return files


def copy_shipped_files() -> None:
    source = layout.venv_dir() / "etc"
    for service, name in SHIPPED:
        origin, target = source / service / name, layout.etc_dir(service) / name
        if origin.is_dir():
            shutil.copytree(origin, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(origin, target)


def config_path(service_folder: str, name: str) -> Path:
    return layout.etc_dir(service_folder) / name
