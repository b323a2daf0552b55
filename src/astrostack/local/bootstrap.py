"""First start of the local cloud: databases, Keystone, users, catalog, flavors, networks.

Each step leaves a marker ``LOCAL/bootstrap/<step>`` when it finished, so a
start that was interrupted resumes where it stopped and a later start skips
what is done. Everything that talks to an API goes through openstacksdk in
this process (the ``openstack`` CLI costs seconds per call).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import keystoneauth1.exceptions
import openstack
import openstack.exceptions

from astrostack.errors import LocalCloudError
from astrostack.local import clouds_yaml, commands, config, credentials, databases, layout

Progress = Callable[[str], None]
API_TIMEOUT_S = 60
IDENTITY_PARALLEL = 4
COMPUTE_DEADLINE_S = 120

ROLES = ("admin", "member", "reader", "service", "heat_stack_owner", "heat_stack_user")
ASTROSTACK_ROLES = ("member", "heat_stack_owner")
# (name, vcpus, ram MiB, disk GiB)
FLAVORS = (
    ("m1.tiny", 1, 512, 1),
    ("m1.small", 1, 2048, 20),
    ("m1.medium", 2, 4096, 40),
    ("m1.large", 4, 8192, 80),
    ("m1.xlarge", 8, 16384, 160),
)
# Quotas of project astrostack: room for a Table-1 scale cluster and a few more.
COMPUTE_QUOTAS = {"instances": 100, "cores": 400, "ram": 800 * 1024, "key_pairs": 100}
NETWORK_QUOTAS = {"network": 50, "subnet": 50, "port": 1000, "router": 20, "floatingip": 50,
                  "security_group": 100, "security_group_rule": 2000}
VOLUME_QUOTAS = {"volumes": 100, "gigabytes": 4000, "snapshots": 100}


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    type: str
    service: str  # key of layout.API_PORTS
    path: str


CATALOG = (
    CatalogEntry("placement", "placement", "placement", ""),
    CatalogEntry("glance", "image", "glance", ""),
    CatalogEntry("nova", "compute", "nova-api", "/v2.1"),
    CatalogEntry("neutron", "network", "neutron", ""),
    # Nova's [cinder] catalog_info and Heat's Cinder client look up volumev3.
    CatalogEntry("cinderv3", "volumev3", "cinder-api", "/v3/%(project_id)s"),
    CatalogEntry("cinder", "block-storage", "cinder-api", "/v3/%(project_id)s"),
    CatalogEntry("heat", "orchestration", "heat-api", "/v1/%(tenant_id)s"),
    CatalogEntry("heat-cfn", "cloudformation", "heat-api-cfn", "/v1"),
)
INTERFACES = ("public", "internal", "admin")


# --- markers -----------------------------------------------------------------------


def done(step: str) -> bool:
    return (layout.markers_dir() / step).exists()


def mark(step: str) -> None:
    (layout.markers_dir() / step).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))


def run_step(step: str, action: Callable[[], Any], say: Progress, what: str) -> None:
    """Run a step unless its marker says it finished before."""
    if done(step):
        return
    started = time.monotonic()
    say(what)
    with api_errors(f"bootstrap step {step}"):
        action()
    mark(step)
    say(f"  {step} done ({time.monotonic() - started:.0f} s)")


DATABASE_STEPS = ("databases", *(f"schema-{name}" for name in databases.schema_syncs_names()), "nova-cell1",
                  "keystone-keys", "keystone-bootstrap")
IDENTITY_STEPS = ("identity",)
CLOUD_STEPS = ("nova-hosts", "flavors", "external-network", "quotas")


def complete() -> bool:
    """True when every step of the first start has finished once."""
    return all(done(step) for step in (*DATABASE_STEPS, *IDENTITY_STEPS, *CLOUD_STEPS))


# --- databases and Keystone's own set-up (MariaDB must answer) ------------------------------


def database_phase(say: Progress) -> None:
    run_step("databases", databases.create_databases, say, "creating databases and their users")
    pending = [name for name in databases.schema_syncs_names() if not done(f"schema-{name}")]
    if pending:
        databases.sync_schemas(say, pending, on_done=lambda name: mark(f"schema-{name}"))
    run_step("nova-cell1", create_cell1, say, "creating Nova's cell1")
    run_step("keystone-keys", keystone_keys, say, "creating Keystone's fernet and credential keys")
    run_step("keystone-bootstrap", keystone_bootstrap, say, "bootstrapping Keystone (admin, region, identity endpoint)")


def _keystone_manage(*args: str, what: str) -> str:
    conf = config.config_path("keystone", "keystone.conf")
    return commands.run([str(layout.venv_bin("keystone-manage")), "--config-file", str(conf), *args],
                        what, timeout=300, log=layout.log_path("db-keystone"))


def keystone_keys() -> None:
    for kind in ("fernet_setup", "credential_setup"):
        _keystone_manage(kind, "--keystone-user", "root", "--keystone-group", "root", what=f"keystone-manage {kind}")


def keystone_bootstrap() -> None:
    url = f"{layout.api_url('keystone')}/v3"
    _keystone_manage("bootstrap", "--bootstrap-password", credentials.load()["keystone_admin"],
                     "--bootstrap-admin-url", url, "--bootstrap-internal-url", url,
                     "--bootstrap-public-url", url, "--bootstrap-region-id", layout.REGION,
                     what="keystone-manage bootstrap")


def _nova_manage(*args: str) -> str:
    conf = config.config_path("nova", "nova.conf")
    return commands.run([str(layout.venv_bin("nova-manage")), "--config-file", str(conf), *args],
                        f"nova-manage {' '.join(args[:2])}", timeout=300)


def create_cell1() -> None:
    if " cell1 " not in _nova_manage("cell_v2", "list_cells"):
        _nova_manage("cell_v2", "create_cell", "--name", "cell1")


# --- identity (Keystone must answer) --------------------------------------------------------


def connect_admin() -> openstack.connection.Connection:
    """The admin of the local cloud, through its clouds.yaml entry."""
    clouds_yaml.write()
    return openstack.connect(cloud=clouds_yaml.ADMIN_CLOUD, api_timeout=API_TIMEOUT_S)


def identity_phase(say: Progress) -> None:
    run_step("identity", lambda: create_identity(connect_admin()), say,
             "creating roles, projects, service users, the catalog and Heat's stack domain")


def create_identity(conn: Any) -> None:
    """Roles, projects, users and their roles, Heat's domain, the catalog (each listed once: a find costs 2 calls)."""
    secrets = credentials.load()
    identity = conn.identity
    roles = {role.name: role for role in identity.roles()}
    for name in ROLES:
        roles[name] = roles.get(name) or identity.create_role(name=name)
    default = identity.find_domain("default", ignore_missing=False)
    projects = {project.name: project for project in identity.projects(domain_id=default.id)}
    users = {user.name: user for user in identity.users(domain_id=default.id)}
    service_project = _ensure_project(identity, projects, "service", default.id)
    project = _ensure_project(identity, projects, "astrostack", default.id)

    def service_user(name: str) -> None:
        account = _ensure_user(identity, users, name, secrets[f"keystone_{name}"], default.id, service_project.id)
        for role in ("service", "admin"):
            identity.assign_project_role_to_user(service_project, account, roles[role])

    def astrostack_user() -> None:
        user = _ensure_user(identity, users, "astrostack", secrets["keystone_astrostack"], default.id, project.id)
        for role in ASTROSTACK_ROLES:
            identity.assign_project_role_to_user(project, user, roles[role])
        identity.assign_project_role_to_user(project, users["admin"], roles["admin"])

    # Keystone hashes each password (bcrypt) and checks each assignment: in parallel, not one by one.
    with ThreadPoolExecutor(max_workers=IDENTITY_PARALLEL) as pool:
        futures = [pool.submit(service_user, name) for name in credentials.SERVICE_USERS]
        futures += [pool.submit(astrostack_user), pool.submit(create_heat_domain, identity, secrets, roles["admin"]),
                    pool.submit(create_catalog, identity)]
        for future in futures:
            future.result()


def _ensure_project(identity: Any, existing: dict[str, Any], name: str, domain_id: str) -> Any:
    return existing.get(name) or identity.create_project(name=name, domain_id=domain_id,
                                                         description="astrostack local cloud")


def _ensure_user(identity: Any, existing: dict[str, Any], name: str, password: str, domain_id: str,
                 project_id: str | None) -> Any:
    """Create the user, or set the password of credentials.json on the one there."""
    user = existing.get(name)
    if user is None:
        return identity.create_user(name=name, password=password, domain_id=domain_id,
                                    default_project_id=project_id)
    return identity.update_user(user, password=password)


def create_heat_domain(identity: Any, secrets: dict[str, str], admin_role: Any) -> None:
    """The domain that holds Heat's stack users, and its admin (heat.conf stack_domain_admin)."""
    domain = identity.find_domain("heat", ignore_missing=True) or identity.create_domain(
        name="heat", description="Owns users and projects created by heat")
    users = {user.name: user for user in identity.users(domain_id=domain.id)}
    admin = _ensure_user(identity, users, "heat_domain_admin", secrets["keystone_heat_domain_admin"], domain.id,
                         None)
    identity.assign_domain_role_to_user(domain, admin, admin_role)


def create_catalog(identity: Any) -> None:
    existing = {(e.service_id, e.interface) for e in identity.endpoints()}
    services = {(s.type, s.name): s for s in identity.services()}
    for entry in CATALOG:
        service = services.get((entry.type, entry.name)) or identity.create_service(
            name=entry.name, type=entry.type, is_enabled=True)
        url = layout.api_url(entry.service) + entry.path
        for interface in INTERFACES:
            if (service.id, interface) not in existing:
                identity.create_endpoint(service_id=service.id, interface=interface, url=url,
                                         region_id=layout.REGION)


# --- the cloud's contents (every API must answer) ------------------------------------------------


def cloud_phase(say: Progress, compute_alive: Callable[[], bool]) -> None:
    conn = connect_admin()
    run_step("nova-hosts", lambda: map_compute_host(conn, compute_alive), say, "mapping the compute host into cell1")
    run_step("flavors", lambda: create_flavors(conn), say, "creating flavors m1.tiny .. m1.xlarge")
    run_step("external-network", lambda: create_external_network(conn), say,
             f"creating the external network `public` ({layout.external_net().cidr})")
    run_step("quotas", lambda: set_quotas(conn), say, "setting the quotas of project astrostack")


def map_compute_host(conn: Any, compute_alive: Callable[[], bool],
                     sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until nova-compute has registered, then map it (the scheduler also does, every 10 s)."""
    deadline = time.monotonic() + COMPUTE_DEADLINE_S
    while not any(s.binary == "nova-compute" and s.state == "up" for s in conn.compute.services()):
        if not compute_alive():
            log = layout.log_path("nova-compute")
            raise LocalCloudError(f"nova-compute exited: {commands.log_tail(log, 3)}", hint=f"log: {log}")
        if time.monotonic() >= deadline:
            raise LocalCloudError(f"nova-compute did not register within {COMPUTE_DEADLINE_S} s",
                                  hint=f"log: {layout.log_path('nova-compute')}")
        sleep(2)
    _nova_manage("cell_v2", "discover_hosts")


def create_flavors(conn: Any) -> None:
    for name, vcpus, ram, disk in FLAVORS:
        if conn.compute.find_flavor(name, ignore_missing=True) is None:
            conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, is_public=True)


def create_external_network(conn: Any) -> None:
    net = layout.external_net()
    network = conn.network.find_network("public", ignore_missing=True) or conn.network.create_network(
        name="public", provider_network_type="flat", provider_physical_network="external",
        is_router_external=True, is_shared=False)
    if not list(conn.network.subnets(network_id=network.id)):
        conn.network.create_subnet(
            name="public-subnet", network_id=network.id, ip_version=4, cidr=net.cidr,
            gateway_ip=net.gateway, is_dhcp_enabled=False,
            allocation_pools=[{"start": net.pool_start, "end": net.pool_end}])


def set_quotas(conn: Any) -> None:
    conn.set_compute_quotas("astrostack", **COMPUTE_QUOTAS)
    conn.set_network_quotas("astrostack", **NETWORK_QUOTAS)
    conn.set_volume_quotas("astrostack", **VOLUME_QUOTAS)


@contextlib.contextmanager
def api_errors(what: str) -> Iterator[None]:
    """openstacksdk and keystoneauth errors become one LocalCloudError line (with the request id)."""
    try:
        yield
    except (openstack.exceptions.SDKException, keystoneauth1.exceptions.ClientException) as exc:
        request_id = getattr(exc, "request_id", None)
        detail = " ".join(str(exc).split())
        raise LocalCloudError(f"{what} failed: {detail}" + (f" (request {request_id})" if request_id else ""),
                              hint=f"logs: {layout.logs_dir()}") from exc
