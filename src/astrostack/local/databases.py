"""The local cloud's MariaDB: its data folder, the databases and users, and the schemas.

MariaDB is Debian's ``mysqld`` with a data folder of its own
(``LOCAL/mysql``), listening on 127.0.0.1:13306 and a socket under
``LOCAL/run``. root reaches it through that socket (unix_socket auth); each
service has a database user of its own with a generated password.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from astrostack.local import commands, config, credentials, layout

Progress = Callable[[str], None]
SYNC_TIMEOUT_S = 900
# Schema syncs are CPU-bound Python; two cores.
SYNC_PARALLEL = 3


def datadir() -> Path:
    return layout.local_dir() / "mysql"


def socket_path() -> Path:
    return layout.run_dir() / "mysqld.sock"


def initialized() -> bool:
    return (datadir() / "mysql").is_dir()


def ensure_datadir(say: Progress) -> None:
    """mariadb-install-db into LOCAL/mysql once (a few seconds)."""
    if initialized():
        return
    say(f"creating the MariaDB data folder {datadir()}")
    commands.run(["/usr/bin/mariadb-install-db", f"--defaults-file={config.config_path('mariadb', 'my.cnf')}",
                  "--user=root", "--skip-test-db", "--auth-root-authentication-method=socket"],
                 "mariadb-install-db", timeout=300, log=layout.log_path("mariadb"), say=say)


def create_statements(secrets: dict[str, str]) -> str:
    """SQL that creates every database and its user (idempotent)."""
    lines = []
    for database, name in config.DB_NAMES.items():
        user = config.DB_OWNER.get(database, database)
        password = secrets["db_" + user]
        lines += [
            f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4;",
            f"CREATE USER IF NOT EXISTS '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';",
            f"ALTER USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';",
            f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'127.0.0.1';",
        ]
    return "\n".join([*lines, "FLUSH PRIVILEGES;", ""])


def create_databases() -> None:
    commands.run(["/usr/bin/mariadb", f"--socket={socket_path()}", "-uroot"], "create the databases",
                 timeout=60, stdin_text=create_statements(credentials.load()))


def schema_syncs() -> dict[str, list[list[str]]]:
    """Per service, the commands that create or upgrade its schemas (run in order)."""
    bin_ = layout.venv_bin
    etc = config.config_path
    nova = ["--config-file", str(etc("nova", "nova.conf"))]
    cinder = ["--config-file", str(etc("cinder", "cinder.conf"))]
    return {
        "keystone": [[str(bin_("keystone-manage")), "--config-file", str(etc("keystone", "keystone.conf")),
                      "db_sync"]],
        "placement": [[str(bin_("placement-manage")), "--config-file", str(etc("placement", "placement.conf")),
                       "db", "sync"]],
        "glance": [[str(bin_("glance-manage")), "--config-file", str(etc("glance", "glance-api.conf")),
                    "db_sync"]],
        "nova": [
            [str(bin_("nova-manage")), *nova, "api_db", "sync"],
            [str(bin_("nova-manage")), *nova, "cell_v2", "map_cell0",
             "--database_connection", config.db_url("nova_cell0", credentials.load())],
            [str(bin_("nova-manage")), *nova, "db", "sync"],
        ],
        "neutron": [[str(bin_("neutron-db-manage")), "--config-file", str(etc("neutron", "neutron.conf")),
                     "--config-file", str(etc("neutron", "ml2_conf.ini")), "upgrade", "heads"]],
        "cinder": [[str(bin_("cinder-manage")), *cinder, "db", "sync"]],
        "heat": [[str(bin_("heat-manage")), "--config-file", str(etc("heat", "heat.conf")), "db_sync"]],
    }


SCHEMA_SERVICES = ("keystone", "placement", "glance", "nova", "neutron", "cinder", "heat")
# The slowest first, so the pool finishes early (neutron has hundreds of migrations).
SYNC_ORDER = ("neutron", "nova", "keystone", "cinder", "heat", "glance", "placement")


def schema_syncs_names() -> tuple[str, ...]:
    return SCHEMA_SERVICES


def sync_schemas(say: Progress, services: list[str], on_done: Callable[[str], None]) -> None:
    """Run the schema syncs, services in parallel (each service's own commands in order)."""
    plan = schema_syncs()
    wanted = [name for name in SYNC_ORDER if name in services]
    say(f"creating database schemas: {', '.join(wanted)} (about 1-3 min; logs {layout.logs_dir()}/db-*.log)")
    with ThreadPoolExecutor(max_workers=SYNC_PARALLEL) as pool:
        futures = [pool.submit(_sync_one, name, plan[name], say, on_done) for name in wanted]
        for future in futures:
            future.result()


def _sync_one(name: str, steps: list[list[str]], say: Progress, on_done: Callable[[str], None]) -> None:
    started = time.monotonic()
    log = layout.log_path(f"db-{name}")
    for argv in steps:
        commands.run(argv, f"{name} schema sync", timeout=SYNC_TIMEOUT_S, log=log, env=_venv_env(), say=say)
    on_done(name)
    say(f"  {name} schema ready ({time.monotonic() - started:.0f} s)")


def _venv_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OS_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{layout.venv_dir() / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env
