"""The local Heat engine: a real ``heat-all`` (openstack-heat 24.1.2) on this machine.

No Keystone: the API runs the ``noauth`` paste pipeline, the engine uses the
fake Keystone client and the in-process ``fake://`` RPC transport. Heat lives
in a venv of its own (``paths.local_dir()/heat-venv``, or
``$ASTROSTACK_HEAT_VENV``); its config, sqlite database, pid file and log live
under ``paths.local_dir()/heat``.

The API binds to the ``docker0`` bridge address when there is one, so that
container-VMs can signal wait conditions; never to 0.0.0.0, because anything
that reaches the noauth API is admin.
"""

from __future__ import annotations

import configparser
import errno
import fcntl
import glob
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from astrostack import paths
from astrostack.errors import LocalCloudError

LOG = logging.getLogger(__name__)

HEAT_PACKAGE = "openstack-heat"
HEAT_VERSION = "24.1.2"
# The Heat plugins (Server, Neutron and Cinder stand-ins) use the Docker SDK.
EXTRA_PACKAGES = ("docker>=6.1",)
DEFAULT_PORT = 8004
PORT_ENV = "ASTROSTACK_HEAT_PORT"
VENV_ENV = "ASTROSTACK_HEAT_VENV"
SHARES_ENV = "ASTROSTACK_LOCAL_SHARES"
# The API listens on the gateway of a Docker bridge of its own. Not docker0:
# inside a container-VM, the VM's own dockerd owns 172.17.0.1, so a VM could
# never reach docker0's address of this machine.
BRIDGE_INTERFACE = "astro-local"
ENGINE_NETWORK = "astrostack-local"
ENGINE_CIDR_ENV = "ASTROSTACK_LOCAL_ENGINE_CIDR"
DEFAULT_ENGINE_CIDR = "10.199.0.0/24"
LOOPBACK = "127.0.0.1"
PROJECT = "admin"
PLUGIN_DIR = Path(__file__).resolve().parent / "heat_plugins"

START_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
PIP_TIMEOUT = 900.0
POLL_INTERVAL = 0.25
LOG_TAIL_LINES = 8

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Progress = Optional[Callable[[str], None]]

# heat-all processes started by this process, so their exit status gets collected.
_CHILDREN: dict[int, subprocess.Popen] = {}
# Probes of the local API never go through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class EngineStatus:
    """What ``status()`` knows about the local engine.

    ``url`` is the orchestration endpoint clients use (``/v1/<project>``);
    ``answering`` says whether the API answered just now.
    """

    running: bool
    answering: bool
    pid: Optional[int]
    url: str
    bind_address: str
    port: int
    log_path: Path
    config_path: Path
    version: Optional[str]


# --- locations ------------------------------------------------------------


def heat_dir() -> Path:
    """Config, database, pid file and logs of the local engine."""
    path = paths.local_dir() / "heat"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def venv_dir() -> Path:
    """The Heat venv: ``$ASTROSTACK_HEAT_VENV`` if set, else under local_dir()."""
    override = os.environ.get(VENV_ENV)
    return Path(override) if override else paths.local_dir() / "heat-venv"


def config_path() -> Path:
    return heat_dir() / "heat.conf"


def log_path() -> Path:
    logs = heat_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    return logs / "heat-all.log"


def pid_path() -> Path:
    return heat_dir() / "heat-all.pid"


# --- install --------------------------------------------------------------


def installed_version(venv: Optional[Path] = None) -> Optional[str]:
    """The openstack-heat version in the venv, or None (also if docker SDK is missing)."""
    venv = venv or venv_dir()
    site = venv / "lib"
    heat = glob.glob(str(site / "python3*" / "site-packages" / "openstack_heat-*.dist-info"))
    docker_sdk = glob.glob(str(site / "python3*" / "site-packages" / "docker-*.dist-info"))
    if not heat or not docker_sdk or not (venv / "bin" / "heat-all").exists():
        return None
    return Path(heat[0]).name[len("openstack_heat-"):-len(".dist-info")]


def install(progress: Progress = None) -> Path:
    """Create the Heat venv and install openstack-heat and the Docker SDK into it.

    Idempotent: returns at once when the right version is already there.
    """
    say = progress or (lambda message: LOG.info("%s", message))
    venv = venv_dir()
    current = installed_version(venv)
    if current == HEAT_VERSION:
        say(f"openstack-heat {HEAT_VERSION} already installed in {venv}")
        return venv
    if not (venv / "bin" / "python").exists():
        say(f"creating the Heat venv {venv}")
        _run([sys.executable, "-m", "venv", str(venv)], "create the Heat venv", timeout=120)
    say(f"installing {HEAT_PACKAGE}=={HEAT_VERSION} into {venv} (about 30 s, 400 MB)")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
          f"{HEAT_PACKAGE}=={HEAT_VERSION}", *EXTRA_PACKAGES],
         "pip install openstack-heat", timeout=PIP_TIMEOUT)
    if installed_version(venv) != HEAT_VERSION:
        raise LocalCloudError(f"openstack-heat {HEAT_VERSION} is still missing from {venv} "
                              "after pip install", hint=f"remove {venv} and retry")
    say(f"openstack-heat {HEAT_VERSION} installed")
    return venv


def _run(argv: list[str], what: str, *, timeout: float) -> None:
    """Run a command, turning a failure into a LocalCloudError with its output's tail."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LocalCloudError(f"could not {what}: no result after {timeout:.0f} s") from exc
    except OSError as exc:
        raise LocalCloudError(f"could not {what}: {exc}") from exc
    if done.returncode != 0:
        tail = _tail_text((done.stderr or done.stdout or "").splitlines())
        raise LocalCloudError(f"could not {what} (exit {done.returncode}): {tail}")


# --- bind address and port ------------------------------------------------


def interface_ipv4(name: str) -> Optional[str]:
    """The IPv4 address of a network interface, or None if it has none."""
    SIOCGIFADDR = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("256s", name.encode()[:15])
        try:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.EADDRNOTAVAIL):
                return None
            raise
    return socket.inet_ntoa(answer[20:24])


def ensure_engine_network() -> None:
    """Create the engine's own Docker bridge (idempotent); no-op without Docker."""
    if interface_ipv4(BRIDGE_INTERFACE):
        return
    import docker

    cidr = ipaddress.IPv4Network(os.environ.get(ENGINE_CIDR_ENV, DEFAULT_ENGINE_CIDR))
    gateway = str(next(cidr.hosts()))
    try:
        client = docker.from_env(timeout=30)
        pool = docker.types.IPAMPool(subnet=str(cidr), gateway=gateway)
        client.networks.create(ENGINE_NETWORK, driver="bridge", ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                               options={"com.docker.network.bridge.name": BRIDGE_INTERFACE},
                               labels={"astrostack.role": "local-engine"})
    except docker.errors.DockerException as exc:
        LOG.warning("could not create the Docker network %s (%s): %s", ENGINE_NETWORK, cidr, exc)


def choose_bind_address() -> str:
    """The engine bridge's address so container-VMs reach the API, else loopback (with a warning)."""
    ensure_engine_network()
    bridge = interface_ipv4(BRIDGE_INTERFACE)
    if bridge:
        return bridge
    LOG.warning("no %s bridge: the local Heat API binds to %s, so local VMs cannot "
                "signal wait conditions (start the Docker engine first)",
                BRIDGE_INTERFACE, LOOPBACK)
    return LOOPBACK


def configured_port() -> int:
    """Port 8004 unless ``$ASTROSTACK_HEAT_PORT`` says otherwise."""
    raw = os.environ.get(PORT_ENV, str(DEFAULT_PORT))
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise LocalCloudError(f"{PORT_ENV}={raw!r} is not a TCP port number (1-65535)")
    return port


def endpoint_url(host: str, port: int) -> str:
    """The orchestration endpoint as the noauth API serves it."""
    return f"http://{host}:{port}/v1/{PROJECT}"


# --- configuration files --------------------------------------------------


def auth_encryption_key() -> str:
    """A 32-character key generated once and kept 0600 (Heat encrypts secrets with it)."""
    key_file = heat_dir() / "auth_encryption_key"
    if key_file.exists():
        key = key_file.read_text().strip()
        if len(key) == 32:
            return key
        raise LocalCloudError(f"{key_file} does not hold a 32-character key",
                              hint="restore it, or delete it together with heat.sqlite")
    key = secrets.token_hex(16)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def token_response(url: str) -> dict:
    """A Keystone v3 token body whose catalog holds the orchestration endpoint."""
    domain = {"id": "default", "name": "Default"}
    endpoints = [{"id": f"heat-{interface}", "interface": interface, "region": "RegionOne",
                  "region_id": "RegionOne", "url": url}
                 for interface in ("public", "internal", "admin")]
    return {"token": {
        "methods": ["password"],
        "issued_at": "2024-01-01T00:00:00.000000Z",
        "expires_at": "2099-01-01T00:00:00.000000Z",
        "user": {"id": PROJECT, "name": PROJECT, "domain": domain},
        "project": {"id": PROJECT, "name": PROJECT, "domain": domain},
        "roles": [{"id": "admin", "name": "admin"}],
        "catalog": [{"id": "heat", "type": "orchestration", "name": "heat",
                     "endpoints": endpoints}],
    }}


API_PASTE = """\
# Written by astrostack: only the noauth pipeline of heat-api.
[composite:heat-api-noauth]
paste.composite_factory = heat.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = heat.api:pipeline_factory
noauth = request_id faultwrap noauth context http_proxy_to_wsgi versionnegotiation apiv1app

[app:apiv1app]
paste.app_factory = heat.common.wsgi:app_factory
heat.app_factory = heat.api.openstack.v1:API

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory

[filter:versionnegotiation]
paste.filter_factory = heat.common.wsgi:filter_factory
heat.filter_factory = heat.api.openstack:version_negotiation_filter

[filter:faultwrap]
paste.filter_factory = heat.common.wsgi:filter_factory
heat.filter_factory = heat.api.openstack:faultwrap_filter

[filter:context]
paste.filter_factory = heat.common.context:ContextMiddleware_filter_factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory

[filter:noauth]
paste.filter_factory = heat.common.noauth:filter_factory

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory
"""


def heat_conf(host: str, port: int, base: Path) -> dict[str, dict[str, str]]:
    """heat.conf as sections of options (see LOCAL-CLOUD-FACTS.md for why each matters)."""
    return {
        "DEFAULT": {
            "host": "astrostack-local",
            "transport_url": "fake://",
            "deferred_auth_method": "password",
            # Heat's FakeKeystoneClient with one id per stack user (local_keystone.py).
            "keystone_backend": "heat.engine.plugins.local_keystone.LocalKeystoneClient",
            "auth_encryption_key": auth_encryption_key(),
            "convergence_engine": "false",
            "num_engine_workers": "1",
            "plugin_dirs": str(PLUGIN_DIR),
            "environment_dir": str(base / "environment.d"),
            "template_dir": str(base / "templates"),
            "max_resources_per_stack": "1000",
            "max_nested_stack_depth": "5",
            "stack_action_timeout": "3600",
            # The CFN API is not started: software deployments use Heat's own API.
            "default_software_config_transport": "POLL_SERVER_HEAT",
            "default_deployment_signal_transport": "HEAT_SIGNAL",
            # A delete while a wait condition waits (rollback of a failed create) lets
            # the wait run this long before cancelling it (Heat's default: 240 s).
            "error_wait_time": "5",
            # oslo.service waits 60 s for in-flight work on SIGTERM by default.
            "graceful_shutdown_timeout": "5",
            "log_file": str(log_path()),
            "use_stderr": "false",
            "debug": "false",
        },
        "database": {"connection": f"sqlite:///{base / 'heat.sqlite'}"},
        "heat_api": {"bind_host": host, "bind_port": str(port), "workers": "1"},
        "heat_all": {"enabled_services": "engine,api"},
        "paste_deploy": {"flavor": "noauth", "api_paste_config": str(base / "api-paste.ini")},
        "noauth": {"token_response": str(base / "token-response.json")},
        "oslo_policy": {"enforce_scope": "false", "enforce_new_defaults": "false"},
        # Wait condition signal URLs (curl_cli) point here: it must reach the VMs.
        "clients_heat": {"url": f"http://{host}:{port}/v1/%(tenant_id)s"},
        "oslo_concurrency": {"lock_path": str(base / "locks")},
    }


def write_config(host: str, port: int) -> Path:
    """Write heat.conf, api-paste.ini and the noauth token body; return heat.conf's path."""
    base = heat_dir()
    for sub in ("environment.d", "templates", "locks"):
        (base / sub).mkdir(exist_ok=True, mode=0o700)
    (base / "api-paste.ini").write_text(API_PASTE)
    token = json.dumps(token_response(endpoint_url(host, port)), indent=2)
    (base / "token-response.json").write_text(token + "\n")
    parser = configparser.RawConfigParser()
    for section, options in heat_conf(host, port, base).items():
        if section != "DEFAULT":
            parser.add_section(section)
        for key, value in options.items():
            parser.set(section, key, value)
    target = config_path()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# Written by astrostack at every `astrostack local start`.\n")
        parser.write(handle)
    return target


def _configured_endpoint() -> tuple[str, int]:
    """Bind address and port from heat.conf, or what a start would choose now."""
    parser = configparser.RawConfigParser()
    if parser.read(config_path()) and parser.has_section("heat_api"):
        return parser.get("heat_api", "bind_host"), parser.getint("heat_api", "bind_port")
    bridge = interface_ipv4(BRIDGE_INTERFACE)
    return bridge or LOOPBACK, configured_port()


def db_sync(venv: Path, conf: Path) -> None:
    """Create or upgrade the sqlite schema (about 1 s; a no-op when current)."""
    _run([str(venv / "bin" / "heat-manage"), "--config-file", str(conf), "db_sync"],
         "create the local Heat database (heat-manage db_sync)", timeout=120)


# --- process --------------------------------------------------------------


def _read_pid() -> Optional[int]:
    try:
        return int(pid_path().read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError:
        LOG.warning("ignoring the unreadable pid file %s", pid_path())
        return None


def _is_heat_all(pid: int) -> bool:
    """True when pid is a live (not zombie) heat-all process."""
    _reap(pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and b"heat-all" in cmdline


def _reap(pid: int) -> None:
    """Collect heat-all's exit status if this very process started it (no zombie left)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (heat-all would retry binding for 30 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _api_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when the API's version document answers (any HTTP status counts)."""
    try:
        with _DIRECT.open(f"http://{host}:{port}/", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # 300 Multiple Choices is the normal answer
    except (urllib.error.URLError, OSError):
        return False


def _engine_answers(host: str, port: int, timeout: float = 5.0) -> bool:
    """True when a stack list goes through the API to the engine and back."""
    url = f"{endpoint_url(host, port)}/stacks?limit=1"
    try:
        with _DIRECT.open(url, timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def status() -> EngineStatus:
    """The engine's state from its pid file, heat.conf and a quick API probe."""
    host, port = _configured_endpoint()
    pid = _read_pid()
    running = pid is not None and _is_heat_all(pid)
    return EngineStatus(
        running=running,
        answering=running and _api_answers(host, port),
        pid=pid if running else None,
        url=endpoint_url(host, port),
        bind_address=host,
        port=port,
        log_path=log_path(),
        config_path=config_path(),
        version=installed_version(),
    )


def start(*, progress: Progress = None, timeout: float = START_TIMEOUT,
          clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> EngineStatus:
    """Start heat-all detached and wait until the engine answers; harmless if running."""
    current = status()
    if current.running:
        _wait_until_ready(current, None, timeout, clock, sleep)
        return status()
    venv = install(progress)
    host, port = choose_bind_address(), configured_port()
    if not _port_free(host, port):
        raise LocalCloudError(f"port {port} on {host} is already in use (another service, or "
                              "the local Heat engine of another ASTROSTACK_HOME)",
                              hint=f"stop it or choose another port with {PORT_ENV}")
    conf = write_config(host, port)
    db_sync(venv, conf)
    process = _spawn(venv, conf)
    try:
        _wait_until_ready(status(), process, timeout, clock, sleep)
    except LocalCloudError:
        _terminate(process.pid, STOP_TIMEOUT, clock, sleep)
        raise
    _warn_missing_plugins(host, port)
    return status()


def _spawn(venv: Path, conf: Path) -> subprocess.Popen:
    """Launch heat-all in its own session; its output goes to the log file."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the (source) plugin folder
    # The Server plugin mounts each cluster's shared folder (the NFS substitute) from here.
    env.setdefault(SHARES_ENV, str(paths.local_dir() / "shares"))
    with open(log_path(), "ab") as log:
        process = subprocess.Popen(
            [str(venv / "bin" / "heat-all"), "--config-file", str(conf)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=heat_dir(), env=env, start_new_session=True, close_fds=True)
    pid_path().write_text(f"{process.pid}\n")
    _CHILDREN[process.pid] = process
    return process


def _wait_until_ready(current: EngineStatus, process: Optional[subprocess.Popen],
                      timeout: float, clock: Clock, sleep: Sleep) -> None:
    """Poll until the engine lists stacks; fail on exit or at the deadline."""
    deadline = clock() + timeout
    while clock() < deadline:
        exited = process.poll() if process else None
        if exited is not None or (process is None and not _is_heat_all(current.pid or -1)):
            raise LocalCloudError(f"heat-all exited (code {exited}) while starting: "
                                  f"{log_tail()}", hint=f"full log: {current.log_path}")
        if _engine_answers(current.bind_address, current.port):
            return
        sleep(POLL_INTERVAL)
    raise LocalCloudError(f"local Heat engine did not answer on {current.url} within "
                          f"{timeout:.0f} s: {log_tail()}", hint=f"full log: {current.log_path}")


def _warn_missing_plugins(host: str, port: int) -> None:
    """Log which astrostack stand-in resource types the engine did not load."""
    url = f"{endpoint_url(host, port)}/resource_types?name=AstrostackLocal"
    try:
        with _DIRECT.open(url, timeout=10) as answer:
            loaded = set(json.load(answer).get("resource_types", []))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        LOG.warning("could not list the engine's resource types: %s", exc)
        return
    wanted = set(local_environment_types())
    missing = sorted(wanted - loaded)
    if missing:
        LOG.warning("the local Heat engine did not load %s from %s; see %s",
                    ", ".join(missing), PLUGIN_DIR, log_path())


def local_environment_types() -> list[str]:
    """The stand-in types that heat_templates/local-environment.yaml maps to."""
    import yaml

    env_file = paths.heat_templates_dir() / "local-environment.yaml"
    try:
        registry = yaml.safe_load(env_file.read_text()).get("resource_registry", {})
    except FileNotFoundError:
        return []
    return [value for value in registry.values() if isinstance(value, str)]


def stop(*, timeout: float = STOP_TIMEOUT, clock: Clock = time.monotonic,
         sleep: Sleep = time.sleep) -> EngineStatus:
    """Stop heat-all (SIGTERM to its session, SIGKILL at the deadline); harmless if stopped."""
    pid = _read_pid()
    if pid is not None and _is_heat_all(pid):
        _terminate(pid, timeout, clock, sleep)
    pid_path().unlink(missing_ok=True)
    return status()


def _terminate(pid: int, timeout: float, clock: Clock, sleep: Sleep) -> None:
    """Signal heat-all's process group and wait for it to go, escalating at the deadline."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(pid, sig)
        deadline = clock() + timeout
        while clock() < deadline:
            if not _is_heat_all(pid):
                return
            sleep(POLL_INTERVAL)
        LOG.warning("heat-all (pid %d) still alive %.0f s after %s", pid, timeout, sig.name)
    raise LocalCloudError(f"could not stop heat-all (pid {pid})")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """heat-all leads its own session, so its group id is its pid."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return


# --- diagnostics ----------------------------------------------------------


def log_tail(lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of the engine log, joined on one line for an error message."""
    try:
        content = log_path().read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log yet)"
    return _tail_text(content, lines)


def _tail_text(content: list[str], lines: int = LOG_TAIL_LINES) -> str:
    kept = [line.strip() for line in content if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(no output)"


def remove_state() -> None:
    """Delete the engine's database, config and logs (not the venv); it must be stopped."""
    if status().running:
        raise LocalCloudError("the local Heat engine is running", hint="stop it first")
    shutil.rmtree(heat_dir())
