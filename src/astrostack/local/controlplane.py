"""`astrostack local start / stop / status`: the local cloud's control plane as one flow.

start: Debian packages and the OpenStack venv (once), the external bridge,
config files, MariaDB/RabbitMQ/registry, then (first start only) schemas and
Keystone's set-up, Keystone, the identity set-up, every other service, and
the cloud's contents (flavors, external network, quotas, the VM image,
clouds.yaml), and a check that the VMs' side of the external bridge reaches
the APIs. A later start only starts what is not running.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from astrostack import locks
from astrostack.errors import InvalidInput, LocalCloudError
from astrostack.local import (
    bootstrap,
    clouds_yaml,
    commands,
    config,
    databases,
    dockerd,
    external_net,
    host_kernel,
    install,
    layout,
    preflight,
    services,
    site_registry,
    supervisor,
    vm_image,
)

Progress = Callable[[str], None]
SKIP_IMAGE_ENV = "ASTROSTACK_LOCAL_SKIP_VM_IMAGE"


@dataclass(frozen=True)
class StartReport:
    started: list[str]
    compute_driver: str
    seconds: float


def _localnet_importable() -> bool:
    return install.venv_can_import(services.LOCALNET_MODULE)


def make_supervisor(say: Progress) -> supervisor.Supervisor:
    return supervisor.Supervisor(services.service_table(_cached(_localnet_importable)), say)


def _cached(check: Callable[[], bool]) -> Callable[[], bool]:
    """Ask once per run (each check imports in the OpenStack venv: seconds)."""
    answer: list[bool] = []

    def cached() -> bool:
        if not answer:
            answer.append(check())
        return answer[0]
    return cached


@dataclass(frozen=True)
class Prepared:
    driver: config.ComputeDriver
    code_changed: bool   # astrostack_localcloud was reinstalled: running services have the old code


def prepare(say: Progress) -> Prepared:
    """Packages, venv, the external bridge and fresh config files."""
    code_changed = install.install_all(say)
    dockerd.ensure_dockerd()
    for line in preflight.missing(preflight.run_preflight()):
        say(f"this kernel: {line}")
    external_net.ensure(say)
    host_kernel.ensure_neighbour_table(say)
    driver = config.choose_compute_driver()
    say(f"nova compute_driver = {driver.name} ({driver.reason})")
    config.write_all(driver.nova_setting(config.nova_virt_dir()))
    databases.ensure_datadir(say)
    return Prepared(driver, code_changed)


def _busy(holder: str) -> LocalCloudError:
    return LocalCloudError(f"another `astrostack local start/stop` (pid {holder}) is running",
                           hint="wait for it, or see `astrostack local status`")


def _one_at_a_time() -> contextlib.AbstractContextManager:
    """start and stop never run twice at once (they would spawn or kill each other's processes)."""
    return locks.pid_lock(layout.run_dir() / "controlplane.lock", _busy)


def start(only: Optional[list[str]] = None, say: Progress = print) -> StartReport:
    """Start the local cloud (or the named services and what they need); harmless when running."""
    with _one_at_a_time():
        return _start(only, say)


def _start(only: Optional[list[str]], say: Progress) -> StartReport:
    began = time.monotonic()
    prepared = prepare(say)
    driver = prepared.driver
    sup = make_supervisor(say)
    if prepared.code_changed:
        _stop_services_running_old_code(sup, only or [service.name for service in sup.table], say)
    if only:
        started = sup.start(only)
        _check_still_running(sup, started)
        return StartReport(started, driver.name, time.monotonic() - began)
    started = _start_all(sup, say)
    _contents(say)
    _check_still_running(sup, [service.name for service in sup.table])
    external_net.check_vm_side(say)
    seconds = time.monotonic() - began
    say(f"local cloud up in {seconds:.0f} s: clouds `{clouds_yaml.USER_CLOUD}` and "
        f"`{clouds_yaml.ADMIN_CLOUD}` in {clouds_yaml.clouds_yaml_path()}")
    return StartReport(started, driver.name, seconds)


def _stop_services_running_old_code(sup: supervisor.Supervisor, names: list[str], say: Progress) -> None:
    """The OpenStack side loads astrostack_localcloud (launcher, ML2 driver, Nova driver,
    network agent): after a reinstall, the running ones of NAMES stop, to start on the new code."""
    running = [name for name in names if name in sup.services and name not in services.INFRASTRUCTURE
               and sup.running(name)]
    if running:
        say(f"{install.LOCALCLOUD_PACKAGE} changed: restarting {len(running)} running services on the new code")
        sup.stop(running)


def _start_all(sup: supervisor.Supervisor, say: Progress) -> list[str]:
    """Everything, with the first start's set-up between the layers that need it."""
    everything = [service.name for service in sup.table]
    if bootstrap.complete():
        say("starting every service")
        return sup.start(everything)
    say("first start: infrastructure (MariaDB, RabbitMQ, registry)")
    started = sup.start(list(services.INFRASTRUCTURE))
    bootstrap.database_phase(say)
    started += sup.start(["keystone"])
    bootstrap.identity_phase(say)
    say("starting the OpenStack services")
    started += sup.start(everything)
    bootstrap.cloud_phase(say, compute_alive=lambda: sup.running("nova-compute"))
    return started


def _check_still_running(sup: supervisor.Supervisor, names: list[str]) -> None:
    """A daemon that passed its settle time may still die (a driver that does not load)."""
    for name in names:
        service = sup.services[name]
        available = service.available is None or service.available()
        if available and not sup.running(name):
            raise LocalCloudError(f"{name} exited after starting: {commands.log_tail(service.log, 3)}",
                                  hint=f"log: {service.log}")


def _contents(say: Progress) -> None:
    """What every start checks: clouds.yaml, the registry trust, the VM image."""
    clouds_yaml.write()
    site_registry.trust(say)
    if os.environ.get(SKIP_IMAGE_ENV):
        say(f"VM image not checked ({SKIP_IMAGE_ENV} is set)")
        return
    with bootstrap.api_errors("putting the VM image in Glance"):
        vm_image.ensure(bootstrap.connect_admin(), say)


def stop(only: Optional[list[str]] = None, say: Progress = print) -> list[str]:
    """Stop every service (or the named ones), APIs and daemons first, the infrastructure last."""
    with _one_at_a_time():
        return _stop(only, say)


def _stop(only: Optional[list[str]], say: Progress) -> list[str]:
    sup = make_supervisor(say)
    if only:
        known = services.by_name(sup.table)
        unknown = [name for name in only if name not in known]
        if unknown:
            raise InvalidInput(f"no such service: {', '.join(unknown)}", hint=f"services: {', '.join(known)}")
        return sup.stop(only)
    names = [service.name for service in sup.table]
    infrastructure = [name for name in names if name in services.INFRASTRUCTURE]
    openstack_side = [name for name in names if name not in services.INFRASTRUCTURE]
    stopped = sup.stop(openstack_side)
    stopped += sup.stop([name for name in infrastructure if name != "epmd"])
    stopped += sup.stop(["epmd"])
    return stopped


def status(say: Progress = print) -> list[supervisor.ServiceStatus]:
    return make_supervisor(say).status()
