"""The local cloud's processes: what each one runs, reads, logs, and how it answers.

:func:`service_table` lists every process (argv, config, log, pid file,
health probe, what must be ready before it starts); :mod:`.supervisor`
starts, watches and stops them.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from astrostack.errors import InvalidInput
from astrostack.local import layout

PROBE_TIMEOUT_S = 2.0
LOCALNET_MODULE = "astrostack_localcloud.net.agent"

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --- probes ---------------------------------------------------------------------


@dataclass(frozen=True)
class HttpProbe:
    """Answering = any HTTP answer below 500 (401, 300 and 404 included) within the timeout."""

    url: str

    def __call__(self) -> bool:
        try:
            with _DIRECT.open(self.url, timeout=PROBE_TIMEOUT_S):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except (urllib.error.URLError, OSError):
            return False

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class TcpProbe:
    """Answering = something accepts a TCP connection there."""

    host: str
    port: int

    def __call__(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=PROBE_TIMEOUT_S):
                return True
        except OSError:
            return False

    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"


Probe = Optional[Callable[[], bool]]


# --- the table --------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]
    config: tuple[Path, ...] = ()
    probe: Probe = None
    after: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # A check that it can run at all (the network agent may not be written yet).
    available: Optional[Callable[[], bool]] = None
    missing_reason: str = ""

    @property
    def log(self) -> Path:
        return layout.log_path(self.name)

    @property
    def pid_file(self) -> Path:
        return layout.pid_path(self.name)

    @property
    def health(self) -> str:
        return self.probe.describe() if self.probe is not None and hasattr(self.probe, "describe") else ""


# Config files of each API served by astrostack_localcloud.wsgi (folder, file).
API_CONFIG = {
    "keystone": (("keystone", "keystone.conf"),),
    "placement": (("placement", "placement.conf"),),
    "glance": (("glance", "glance-api.conf"),),
    "nova-api": (("nova", "nova.conf"),),
    "nova-metadata": (("nova", "nova.conf"),),
    "neutron": (("neutron", "neutron.conf"), ("neutron", "ml2_conf.ini")),
    "cinder-api": (("cinder", "cinder.conf"),),
    "heat-api": (("heat", "heat.conf"),),
    "heat-api-cfn": (("heat", "heat.conf"),),
}
# A path each API answers without a token.
API_HEALTH_PATH = {"keystone": "/v3", "glance": "/versions"}
# (name, console script, config (folder, file), what must answer first)
DAEMONS = (
    ("nova-conductor", "nova-conductor", ("nova", "nova.conf"), ("mariadb", "rabbitmq")),
    ("nova-scheduler", "nova-scheduler", ("nova", "nova.conf"), ("mariadb", "rabbitmq")),
    # nova-compute reports its resources to Placement as it starts (and exits if Placement is not answering).
    ("nova-compute", "nova-compute", ("nova", "nova-compute.conf"), ("rabbitmq", "placement")),
    ("cinder-scheduler", "cinder-scheduler", ("cinder", "cinder.conf"), ("mariadb", "rabbitmq")),
    ("cinder-volume", "cinder-volume", ("cinder", "cinder.conf"), ("mariadb", "rabbitmq")),
    ("heat-engine", "heat-engine", ("heat", "heat.conf"), ("mariadb", "rabbitmq")),
)
# Keystone caches token validations and role assignments there (without a cache,
# it was the busiest process of the machine: SQL queries for every token of
# every request). memcached evicts the least recently used beyond this size.
MEMCACHED_MIB = 64
INFRASTRUCTURE = ("epmd", "mariadb", "rabbitmq", "memcached", "registry")


def _etc(folder: str, name: str) -> Path:
    return layout.etc_dir(folder) / name


def infrastructure_services() -> list[Service]:
    """MariaDB, RabbitMQ (and the epmd it needs), memcached (Keystone's cache) and the site
    registry, all Debian's."""
    rabbit = layout.state_dir("rabbitmq")
    my_cnf, registry_cfg = _etc("mariadb", "my.cnf"), _etc("registry", "config.yml")
    return [
        Service("epmd", ("/usr/bin/epmd", "-port", str(layout.EPMD_PORT), "-address", layout.LOOPBACK),
                probe=TcpProbe(layout.LOOPBACK, layout.EPMD_PORT), env={"ERL_EPMD_ADDRESS": layout.LOOPBACK}),
        Service("mariadb", ("/usr/sbin/mysqld", f"--defaults-file={my_cnf}"), config=(my_cnf,),
                probe=TcpProbe(layout.LOOPBACK, layout.MARIADB_PORT)),
        Service("rabbitmq", ("/usr/lib/rabbitmq/bin/rabbitmq-server",),
                config=(_etc("rabbitmq", "rabbitmq.conf"),),
                probe=TcpProbe(layout.LOOPBACK, layout.RABBITMQ_PORT), after=("epmd",), env=rabbitmq_env(rabbit)),
        Service("memcached", ("/usr/bin/memcached", "-u", "memcache", "-l", layout.LOOPBACK,
                              "-p", str(layout.MEMCACHED_PORT), "-U", "0", "-m", str(MEMCACHED_MIB)),
                probe=TcpProbe(layout.LOOPBACK, layout.MEMCACHED_PORT)),
        Service("registry", ("/usr/bin/docker-registry", "serve", str(registry_cfg)), config=(registry_cfg,),
                probe=HttpProbe(f"http://{layout.registry_address()}/v2/")),
    ]


def rabbitmq_env(base: Path) -> dict[str, str]:
    """Debian's RabbitMQ with every file and port of its own (loopback only)."""
    etc = layout.etc_dir("rabbitmq")
    empty_env = etc / "rabbitmq-env.conf"
    if not empty_env.exists():
        empty_env.write_text("# astrostack: settings come from the environment\n")
    return {
        "HOME": str(base),  # the Erlang cookie lives in $HOME
        "RABBITMQ_CONF_ENV_FILE": str(empty_env),
        "RABBITMQ_CONFIG_FILE": str(etc / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(etc / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(etc / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(layout.logs_dir()),
        "RABBITMQ_PID_FILE": str(layout.run_dir() / "rabbitmq.server.pid"),
        "RABBITMQ_NODENAME": "astrostack@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": layout.LOOPBACK,
        "RABBITMQ_NODE_PORT": str(layout.RABBITMQ_PORT),
        "RABBITMQ_DIST_PORT": str(layout.RABBITMQ_DIST_PORT),
        "ERL_EPMD_PORT": str(layout.EPMD_PORT),
        "ERL_EPMD_ADDRESS": layout.LOOPBACK,
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def api_services() -> list[Service]:
    python = str(layout.venv_python())
    services = []
    for name, files in API_CONFIG.items():
        config = tuple(_etc(folder, file) for folder, file in files)
        args = [arg for path in config for arg in ("--config-file", str(path))]
        host, port = layout.api_host(), layout.API_PORTS[name]
        after = ("mariadb", "memcached") if name == "keystone" else ("mariadb", "rabbitmq", "keystone")
        services.append(Service(
            name, (python, "-m", "astrostack_localcloud.wsgi", name, *args, "--bind", f"{host}:{port}"),
            config=config, probe=HttpProbe(f"http://{host}:{port}{API_HEALTH_PATH.get(name, '/')}"),
            after=after))
    return services


def daemon_services(localnet_available: Callable[[], bool]) -> list[Service]:
    services = []
    for name, script, (folder, file), after in DAEMONS:
        conf = _etc(folder, file)
        services.append(Service(name, (str(layout.venv_bin(script)), "--config-file", str(conf)),
                                config=(conf,), after=after))
    localnet_conf = _etc("localnet", "localnet.conf")
    services.append(Service(
        "astrostack-localnet", (str(layout.venv_bin("astrostack-localnet")), "--config-file", str(localnet_conf)),
        config=(localnet_conf,), after=("rabbitmq", "keystone", "neutron"), available=localnet_available,
        missing_reason=f"{LOCALNET_MODULE} is not in the OpenStack venv yet (no data plane: "
                       "no DHCP, routing or security groups)"))
    return services


def service_table(localnet_available: Callable[[], bool] = lambda: True) -> list[Service]:
    """Every process of the local cloud, in start order."""
    return [*infrastructure_services(), *api_services(), *daemon_services(localnet_available)]


def by_name(table: list[Service]) -> dict[str, Service]:
    return {service.name: service for service in table}


def with_prerequisites(table: list[Service], wanted: list[str]) -> list[str]:
    """The wanted services and everything they need, in table order."""
    services = by_name(table)
    unknown = sorted(set(wanted) - set(services))
    if unknown:
        raise InvalidInput(f"no such service: {', '.join(unknown)}",
                              hint=f"services: {', '.join(services)}")
    needed: set[str] = set()
    pending = list(wanted)
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending.extend(services[name].after)
    return [service.name for service in table if service.name in needed]
