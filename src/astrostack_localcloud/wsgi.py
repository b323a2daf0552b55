"""Serve one OpenStack API's WSGI application with cheroot.

    python -m astrostack_localcloud.wsgi SERVICE --config-file FILE [...] --bind HOST:PORT

The releases of the local cloud ship their APIs only as WSGI modules. Some
(Cinder, Heat, Neutron) parse ``sys.argv`` with oslo.config, others find
their files through environment variables; the launcher hands them both
forms of the same ``--config-file`` list, and nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Callable

LOG = logging.getLogger("astrostack_localcloud.wsgi")
THREADS = 8
STOP_GRACE_S = 3.0


@dataclass(frozen=True)
class Api:
    module: str
    prog: str
    # How the application finds its config: env var of the folder, env var of the file names.
    dir_env: str = ""
    files_env: str = ""
    # Nova loads its paste pipeline from the first file of that list.
    paste_file: str = ""


APIS = {
    "keystone": Api("keystone.wsgi.api", "keystone", "OS_KEYSTONE_CONFIG_DIR", "OS_KEYSTONE_CONFIG_FILES"),
    "placement": Api("placement.wsgi.api", "placement-api", "OS_PLACEMENT_CONFIG_DIR"),
    "glance": Api("glance.wsgi.api", "glance-api", "OS_GLANCE_CONFIG_DIR"),
    "nova-api": Api("nova.wsgi.osapi_compute", "nova-api-os-compute", "OS_NOVA_CONFIG_DIR", "OS_NOVA_CONFIG_FILES",
                    paste_file="api-paste.ini"),
    "nova-metadata": Api("nova.wsgi.metadata", "nova-api-metadata", "OS_NOVA_CONFIG_DIR", "OS_NOVA_CONFIG_FILES",
                         paste_file="api-paste.ini"),
    "neutron": Api("neutron.wsgi.api", "neutron-api", "OS_NEUTRON_CONFIG_DIR", "OS_NEUTRON_CONFIG_FILES"),
    "cinder-api": Api("cinder.wsgi.api", "cinder-api"),
    "heat-api": Api("heat.wsgi.api", "heat-api"),
    "heat-api-cfn": Api("heat.wsgi.cfn", "heat-api-cfn"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="astrostack_localcloud.wsgi", description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=sorted(APIS))
    parser.add_argument("--config-file", action="append", required=True, dest="config_files")
    parser.add_argument("--bind", required=True, help="HOST:PORT (never 0.0.0.0)")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    if not host or host == "0.0.0.0" or not port.isdigit():
        parser.error(f"--bind {args.bind!r}: give HOST:PORT with a real address of this machine")
    args.host, args.port = host, int(port)
    return args


def config_environment(api: Api, config_files: list[str]) -> dict[str, str]:
    """The env vars through which the application finds exactly these files."""
    env = {}
    folders = {os.path.dirname(os.path.abspath(path)) for path in config_files}
    if api.dir_env and len(folders) == 1:
        env[api.dir_env] = folders.pop()
    if api.files_env:
        names = [os.path.basename(path) for path in config_files]
        env[api.files_env] = ";".join([api.paste_file, *names] if api.paste_file else names)
    return env


def load_application(api: Api, config_files: list[str]) -> Callable:
    """Import the WSGI module with oslo.config seeing only ``--config-file`` arguments."""
    os.environ.update(config_environment(api, config_files))
    sys.argv = [api.prog, *(arg for path in config_files for arg in ("--config-file", path))]
    return importlib.import_module(api.module).application


def serve(application: Callable, host: str, port: int, name: str) -> None:
    """Run cheroot until SIGTERM or SIGINT."""
    from cheroot import wsgi

    server = wsgi.Server((host, port), application, numthreads=THREADS, server_name=name,
                         request_queue_size=64)
    server.max_request_body_size = 0  # Glance uploads images of any size

    def stop(*_: object) -> None:
        # cheroot's stop() joins its worker threads, which may sit in a keep-alive
        # read; it runs beside the signal handler, and the process ends regardless.
        threading.Thread(target=server.stop, daemon=True).start()
        threading.Timer(STOP_GRACE_S, os._exit, args=(0,)).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.warning("%s serving on http://%s:%d", name, host, port)
    server.safe_start()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    api = APIS[args.service]
    application = load_application(api, args.config_files)
    serve(application, args.host, args.port, args.service)


if __name__ == "__main__":
    main()
