"""The agent's configuration: one INI file written by the control plane
(``astrostack local start``, template ``src/astrostack/local/templates/localnet.conf.j2``).

    LOCAL/etc/localnet/localnet.conf   (LOCAL: $ASTROSTACK_LOCAL_DIR, else
                                        $ASTROSTACK_HOME/local, else
                                        ~/.local/share/astrostack/local)

    [DEFAULT]
    state_dir = LOCAL/net
    region = RegionOne
    # optional: resync_interval = 30, api_timeout = 15, dhcp_lease_duration = 86400,
    # dns_domain = openstacklocal, host = <hostname>, cloud = astrostack-local-admin
    # (a clouds.yaml entry, used when [neutron] has no credentials), clouds_yaml = FILE,
    # host_namespace = NAME (tests only: the namespace that holds the bridges)

    [neutron]                 # a service user with the admin role
    auth_url = http://172.24.4.1:15000/v3
    username = neutron
    password = ...
    project_name = service
    user_domain_name = Default
    project_domain_name = Default
    endpoint = http://172.24.4.1:19696     # optional endpoint override

    [notifications]
    transport_url = rabbit://USER:PASS@127.0.0.1:17672/
    topic = notifications

    [metadata]
    nova_metadata_url = http://172.24.4.1:18775
    metadata_proxy_shared_secret = ...     # nova.conf [neutron] metadata_proxy_shared_secret

    [external]
    bridge = astro-ex
"""

from __future__ import annotations

import configparser
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from astrostack_localcloud import naming

CONFIG_NAME = "localnet.conf"


class ConfigError(Exception):
    """The agent's config file is missing or wrong; the message names the file and key."""


def local_dir() -> Path:
    explicit = os.environ.get("ASTROSTACK_LOCAL_DIR")
    if explicit:
        return Path(explicit)
    home = os.environ.get("ASTROSTACK_HOME")
    if home:
        return Path(home) / "local"
    return Path.home() / ".local" / "share" / "astrostack" / "local"


def default_config_path() -> Path:
    return local_dir() / "etc" / "localnet" / CONFIG_NAME


@dataclass(frozen=True)
class AgentConfig:
    cloud: str = "astrostack-local-admin"
    credentials: tuple[tuple[str, str], ...] = ()     # openstack.connect() keywords, if given
    clouds_yaml: str = ""
    transport_url: str = ""
    notification_topics: tuple[str, ...] = ("notifications",)
    external_bridge: str = naming.EXTERNAL_BRIDGE
    state_dir: Path = Path()
    host: str = ""
    resync_interval: float = 30.0
    api_timeout: float = 15.0
    dhcp_lease_duration: int = 86400
    dns_domain: str = "openstacklocal"
    host_namespace: str | None = None
    nova_metadata_host: str = "172.24.4.1"
    nova_metadata_port: int = 18775
    metadata_secret: str = ""

    @property
    def ports_dir(self) -> Path:
        """One file per ready port: the Nova driver waits for it."""
        return self.state_dir / "ports"

    @property
    def dhcp_dir(self) -> Path:
        return self.state_dir / "dhcp"


def _number(section: configparser.SectionProxy, key: str, default: float, path: Path, kind=float):
    raw = section.get(key, fallback="").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: {key} = {raw!r} is not a number") from exc


CREDENTIAL_KEYS = ("auth_url", "username", "password", "project_name", "user_domain_name",
                   "project_domain_name")


def _section(parser: configparser.ConfigParser, name: str) -> configparser.SectionProxy:
    return parser[name] if parser.has_section(name) else parser["DEFAULT"]


def _credentials(parser: configparser.ConfigParser) -> tuple[tuple[str, str], ...]:
    if not parser.has_section("neutron") or not parser["neutron"].get("auth_url", "").strip():
        return ()
    neutron = parser["neutron"]
    found = [(key, neutron.get(key, "").strip()) for key in CREDENTIAL_KEYS]
    region = parser["DEFAULT"].get("region", "").strip()
    if region:
        found.append(("region_name", region))
    endpoint = neutron.get("endpoint", "").strip()
    if endpoint:
        found.append(("network_endpoint_override", endpoint))
    return tuple(found)


def _nova_metadata(meta: configparser.SectionProxy, path: Path) -> tuple[str, int]:
    url = meta.get("nova_metadata_url", fallback="").strip()
    if not url:
        return (meta.get("nova_metadata_host", fallback="172.24.4.1").strip(),
                _number(meta, "nova_metadata_port", 18775, path, int))
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise ConfigError(f"{path}: nova_metadata_url = {url!r} is not http://HOST:PORT")
    return parsed.hostname, parsed.port or 80


def load(path: Path) -> AgentConfig:
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(path):
        raise ConfigError(f"{path}: no such config file (the control plane writes it)")
    base = parser["DEFAULT"]
    notifications = _section(parser, "notifications")
    external = _section(parser, "external")
    meta = _section(parser, "metadata")
    state_dir = base.get("state_dir", fallback="").strip() or str(local_dir() / "net")
    topics = notifications.get("topic", fallback="") or notifications.get("notification_topics", fallback="")
    metadata_host, metadata_port = _nova_metadata(meta, path)
    return AgentConfig(
        cloud=base.get("cloud", fallback="astrostack-local-admin").strip(),
        credentials=_credentials(parser),
        clouds_yaml=base.get("clouds_yaml", fallback="").strip(),
        transport_url=notifications.get("transport_url", fallback="").strip(),
        notification_topics=tuple(t.strip() for t in topics.split(",") if t.strip()) or ("notifications",),
        external_bridge=(external.get("bridge", fallback="") or base.get("external_bridge", fallback="")).strip()
        or naming.EXTERNAL_BRIDGE,
        state_dir=Path(state_dir),
        host=base.get("host", fallback="").strip() or socket.gethostname(),
        resync_interval=_number(base, "resync_interval", 30.0, path),
        api_timeout=_number(base, "api_timeout", 15.0, path),
        dhcp_lease_duration=_number(base, "dhcp_lease_duration", 86400, path, int),
        dns_domain=base.get("dns_domain", fallback="openstacklocal").strip(),
        host_namespace=base.get("host_namespace", fallback="").strip() or None,
        nova_metadata_host=metadata_host,
        nova_metadata_port=metadata_port,
        metadata_secret=meta.get("metadata_proxy_shared_secret", fallback="").strip(),
    )
