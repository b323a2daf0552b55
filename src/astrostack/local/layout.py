"""Where the local cloud lives: its addresses, ports and files.

Everything here is what docs/local-cloud.md ("What runs") promises; the other
modules of the control plane take their paths and ports from this one place.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from astrostack import paths
from astrostack.errors import LocalCloudError

EXTERNAL_CIDR_ENV = "ASTROSTACK_LOCAL_EXTERNAL_CIDR"
DEFAULT_EXTERNAL_CIDR = "172.24.4.0/24"
LOOPBACK = "127.0.0.1"
REGION = "RegionOne"
# The hostname every service registers under (Nova's compute node, Cinder's volume host).
SERVICE_HOST = "astrostack-local"

API_PORTS = {
    "keystone": 15000,
    "placement": 18778,
    "glance": 19292,
    "nova-api": 18774,
    "nova-metadata": 18775,
    "neutron": 19696,
    "cinder-api": 18776,
    "heat-api": 18004,
    "heat-api-cfn": 18000,
}
REGISTRY_PORT = 5050
MARIADB_PORT = 13306
RABBITMQ_PORT = 17672
RABBITMQ_DIST_PORT = 27672
EPMD_PORT = 14369
MEMCACHED_PORT = 11311


@dataclass(frozen=True)
class ExternalNet:
    """The external network `public`: its CIDR, gateway (on this machine) and pool."""

    cidr: str
    gateway: str
    pool_start: str
    pool_end: str
    # Outside the pool: the address `local start` checks the VMs' way to the APIs from.
    vm_side_probe: str

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.cidr).prefixlen


def external_net() -> ExternalNet:
    """172.24.4.0/24 (gateway .1, pool .10-.250, .253 for the start's check) unless
    ASTROSTACK_LOCAL_EXTERNAL_CIDR says otherwise."""
    network = ipaddress.IPv4Network(os.environ.get(EXTERNAL_CIDR_ENV, DEFAULT_EXTERNAL_CIDR))
    hosts = list(network.hosts())
    if len(hosts) < 16:
        raise LocalCloudError(f"{EXTERNAL_CIDR_ENV}={network} is too small for the external network",
                              hint="use a /27 or larger")
    return ExternalNet(cidr=str(network), gateway=str(hosts[0]),
                       pool_start=str(hosts[min(9, len(hosts) - 2)]), pool_end=str(hosts[-5]),
                       vm_side_probe=str(hosts[-2]))


def api_host() -> str:
    """Every API binds to the external network's gateway address, and only there."""
    return external_net().gateway


def api_url(service: str) -> str:
    return f"http://{api_host()}:{API_PORTS[service]}"


def registry_address() -> str:
    return f"{api_host()}:{REGISTRY_PORT}"


def vm_facing_ports() -> dict[str, int]:
    """What the VMs (and routers' metadata proxies) reach on the gateway: the APIs and the registry."""
    return {**API_PORTS, "registry": REGISTRY_PORT}


def local_dir() -> Path:
    """LOCAL = $ASTROSTACK_HOME/local."""
    return paths.local_dir()


def _subdir(*parts: str) -> Path:
    path = local_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def venv_dir() -> Path:
    return local_dir() / "openstack-venv"


def etc_dir(service: str = "") -> Path:
    return _subdir("etc", service) if service else _subdir("etc")


def logs_dir() -> Path:
    return _subdir("logs")


def run_dir() -> Path:
    return _subdir("run")


def state_dir(component: str) -> Path:
    """LOCAL/<component>: mysql, rabbitmq, glance, cinder, nova, net, registry..."""
    return _subdir(component)


def log_path(service: str) -> Path:
    return logs_dir() / f"{service}.log"


def pid_path(service: str) -> Path:
    return run_dir() / f"{service}.pid"


def cinder_volumes_dir() -> Path:
    return _subdir("cinder", "volumes")


def markers_dir() -> Path:
    """One empty file per finished bootstrap step."""
    return _subdir("bootstrap")


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def venv_bin(name: str) -> Path:
    return venv_dir() / "bin" / name
