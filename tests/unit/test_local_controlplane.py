"""The local cloud's control plane where it is pure: config files, service table, clouds.yaml, pins.

Config files are checked by meaning (parsed as INI, keys looked up), in a
throw-away ASTROSTACK_HOME; nothing here starts OpenStack.
"""

from __future__ import annotations

import configparser
import ipaddress
import stat
from pathlib import Path

import pytest
import yaml

from astrostack.errors import InvalidInput, LocalCloudError
from astrostack.local import clouds_yaml, config, databases, external_net, install, layout, services, supervisor

API_HOST = "172.24.4.1"
DESIGN_PORTS = {"keystone": 15000, "placement": 18778, "glance": 19292, "nova-api": 18774,
                "nova-metadata": 18775, "neutron": 19696, "cinder-api": 18776, "heat-api": 18004,
                "heat-api-cfn": 18000}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ASTROSTACK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASTROSTACK_LOCAL_EXTERNAL_CIDR", raising=False)
    monkeypatch.delenv(config.COMPUTE_DRIVER_ENV, raising=False)
    return tmp_path / "home"


@pytest.fixture
def rendered() -> dict[str, configparser.RawConfigParser]:
    """Every INI file the control plane writes, parsed (strict: a key twice in a section fails)."""
    files = config.rendered_files(config.context(config.FAKE_DRIVER))
    parsed = {}
    for path, text in files.items():
        if path.suffix in (".conf", ".ini", ".cnf") and path.name != "rabbitmq.conf":
            parser = configparser.RawConfigParser(strict=True, allow_no_value=True)
            parser.read_string(text)
            parsed[f"{path.parent.name}/{path.name}"] = parser
    return parsed


def test_every_service_config_is_rendered(rendered):
    assert set(rendered) == {
        "keystone/keystone.conf", "placement/placement.conf", "glance/glance-api.conf", "nova/nova.conf",
        "nova/nova-compute.conf", "neutron/neutron.conf", "neutron/ml2_conf.ini", "cinder/cinder.conf",
        "heat/heat.conf", "localnet/localnet.conf", "mariadb/my.cnf"}


def test_databases_and_broker_are_on_loopback_only(rendered):
    for name, parser in rendered.items():
        for section in parser.sections():
            for key, value in parser.items(section):
                value = value or ""  # my.cnf flags such as skip-name-resolve have no value
                assert "0.0.0.0" not in value, (name, section, key)
                if key == "connection" and value.startswith("mysql"):
                    assert "@127.0.0.1:13306/" in value, (name, section)
                if key == "transport_url":
                    assert value.startswith("rabbit://astrostack:") and value.endswith("@127.0.0.1:17672/")
    my_cnf = rendered["mariadb/my.cnf"]["mysqld"]
    assert (my_cnf["bind-address"], my_cnf["port"]) == ("127.0.0.1", "13306")


def test_every_url_a_service_is_told_is_on_the_external_gateway(rendered):
    urls = [value for parser in rendered.values() for section in parser.sections()
            for key, value in parser.items(section) if (value or "").startswith("http")]
    assert urls
    assert {url.split("/")[2].split(":")[0] for url in urls} == {API_HOST}


def test_nova_settings(rendered):
    nova, compute = rendered["nova/nova.conf"], rendered["nova/nova-compute.conf"]
    assert nova["DEFAULT"]["compute_driver"] == config.FAKE_DRIVER
    assert int(nova["DEFAULT"]["sync_power_state_interval"]) <= 10
    assert float(nova["DEFAULT"]["cpu_allocation_ratio"]) >= 8
    assert nova["neutron"]["service_metadata_proxy"] == "true"
    assert nova["scheduler"]["discover_hosts_in_cells_interval"] == "10"
    assert nova["service_user"]["send_service_user_token"] == "true"
    assert nova["cinder"]["catalog_info"].startswith("volumev3:")
    assert nova.has_section("database") and nova.has_section("api_database")
    assert not compute.has_section("database") and not compute.has_section("api_database")
    assert nova["keystone_authtoken"]["service_token_roles_required"] == "true"


def test_the_metadata_secret_is_where_nova_and_the_agent_read_it(rendered):
    secret = rendered["nova/nova.conf"]["neutron"]["metadata_proxy_shared_secret"]
    assert len(secret) >= 16
    assert rendered["localnet/localnet.conf"]["metadata"]["metadata_proxy_shared_secret"] == secret
    assert rendered["localnet/localnet.conf"]["metadata"]["nova_metadata_url"] == f"http://{API_HOST}:18775"


def test_neutron_settings(rendered):
    neutron, ml2 = rendered["neutron/neutron.conf"], rendered["neutron/ml2_conf.ini"]
    assert neutron["DEFAULT"]["core_plugin"] == "ml2"
    assert neutron["DEFAULT"]["service_plugins"] == "router"
    assert neutron["DEFAULT"]["global_physnet_mtu"] == "1500"
    assert neutron["DEFAULT"]["dhcp_agent_notification"] == "false"
    assert neutron["oslo_messaging_notifications"]["driver"] == "messagingv2"
    assert ml2["ml2"]["type_drivers"] == "flat,vxlan"
    assert ml2["ml2"]["project_network_types"] == "vxlan"
    assert ml2["ml2"]["mechanism_drivers"] == "astrostack"
    assert ml2["ml2"]["extension_drivers"] == "port_security"
    assert ml2["ml2_type_flat"]["flat_networks"] == "external"


def test_cinder_and_heat_settings(rendered):
    cinder, heat = rendered["cinder/cinder.conf"], rendered["heat/heat.conf"]
    backend = cinder["DEFAULT"]["enabled_backends"]
    assert cinder[backend]["volume_driver"] == "astrostack_localcloud.cinder_driver.FileVolumeDriver"
    assert cinder[backend]["astrostack_volumes_dir"] == str(layout.local_dir() / "cinder" / "volumes")
    assert heat["DEFAULT"]["heat_metadata_server_url"] == f"http://{API_HOST}:18000"
    assert heat["DEFAULT"]["heat_waitcondition_server_url"] == f"http://{API_HOST}:18000/v1/waitcondition"
    assert heat["DEFAULT"]["num_engine_workers"] == "1"
    assert heat["DEFAULT"]["convergence_engine"] == "false"
    assert len(heat["DEFAULT"]["auth_encryption_key"]) == 32
    assert heat["DEFAULT"]["stack_user_domain_name"] == "heat"
    assert heat["heat_api"]["workers"] == "1"
    assert heat["ec2authtoken"]["endpoint_override"] == f"http://{API_HOST}:15000/v3"
    assert heat["trustee"]["username"] == "heat"


def test_secrets_stay_the_same_across_renders_and_the_file_is_private():
    first = config.rendered_files(config.context(config.FAKE_DRIVER))
    second = config.rendered_files(config.context(config.FAKE_DRIVER))
    assert first == second
    mode = stat.S_IMODE((layout.etc_dir() / "credentials.json").stat().st_mode)
    assert mode == 0o600


def test_compute_driver_choice(monkeypatch):
    assert config.choose_compute_driver(lambda dotted: True).name == config.CONTAINER_DRIVER
    assert config.choose_compute_driver(lambda dotted: False).name == config.FAKE_DRIVER
    monkeypatch.setenv(config.COMPUTE_DRIVER_ENV, "fake.SmallFakeDriver")
    assert config.choose_compute_driver(lambda dotted: True).name == "fake.SmallFakeDriver"


def test_external_network_follows_the_cidr_setting(monkeypatch):
    default = layout.external_net()
    assert (default.cidr, default.gateway, default.pool_start, default.pool_end) == (
        "172.24.4.0/24", "172.24.4.1", "172.24.4.10", "172.24.4.250")
    monkeypatch.setenv("ASTROSTACK_LOCAL_EXTERNAL_CIDR", "10.99.0.0/26")
    other = layout.external_net()
    assert other.gateway == "10.99.0.1" and layout.api_url("keystone") == "http://10.99.0.1:15000"
    assert ipaddress.ip_address(other.pool_end) in ipaddress.ip_network(other.cidr)


def test_nat_rules_masquerade_the_range_out_of_other_interfaces():
    rules = external_net.host_rules("172.24.4.0/24", "astro-ex", layout.vm_facing_ports().values())
    masquerade = [rule for table, chain, rule in rules if (table, chain) == ("nat", "POSTROUTING")]
    assert masquerade == [["-s", "172.24.4.0/24", "!", "-o", "astro-ex", "-m", "physdev", "!", "--physdev-is-bridged",
                           "-m", "comment", "--comment", external_net.COMMENT, "-j", "MASQUERADE"]]
    forward = [rule for table, chain, rule in rules if chain == "FORWARD"]
    assert {tuple(rule[:2]) for rule in forward} == {("-s", "172.24.4.0/24"), ("-d", "172.24.4.0/24")}


def test_the_vms_reach_exactly_the_api_and_registry_ports_through_a_host_firewall():
    rules = external_net.host_rules("172.24.4.0/24", "astro-ex", layout.vm_facing_ports().values())
    (accept,) = [rule for table, chain, rule in rules if (table, chain) == ("filter", "INPUT")]
    assert accept[:2] == ["-i", "astro-ex"] and accept[-2:] == ["-j", "ACCEPT"]
    ports = accept[accept.index("--dports") + 1].split(",")
    assert sorted(map(int, ports)) == sorted([*DESIGN_PORTS.values(), layout.REGISTRY_PORT])


def test_the_vm_side_check_uses_an_address_outside_the_floating_ip_pool():
    net = layout.external_net()
    pool = range(int(ipaddress.ip_address(net.pool_start)), int(ipaddress.ip_address(net.pool_end)) + 1)
    probe = ipaddress.ip_address(net.vm_side_probe)
    assert probe in ipaddress.ip_network(net.cidr) and int(probe) not in pool and str(probe) != net.gateway


# --- service table -------------------------------------------------------------------


def test_service_table_binds_apis_to_the_gateway_and_the_rest_to_loopback():
    table = services.by_name(services.service_table())
    for name, port in DESIGN_PORTS.items():
        argv = table[name].argv
        assert argv[argv.index("--bind") + 1] == f"{API_HOST}:{port}"
        assert table[name].probe.url.startswith(f"http://{API_HOST}:{port}/")
    for service in table.values():
        assert "0.0.0.0" not in " ".join(service.argv)
        assert service.log == layout.logs_dir() / f"{service.name}.log"
        assert service.pid_file == layout.run_dir() / f"{service.name}.pid"
    assert (table["mariadb"].probe.host, table["mariadb"].probe.port) == ("127.0.0.1", 13306)
    rabbit = table["rabbitmq"].env
    assert (rabbit["RABBITMQ_NODE_IP_ADDRESS"], rabbit["RABBITMQ_NODE_PORT"], rabbit["RABBITMQ_DIST_PORT"],
            rabbit["ERL_EPMD_PORT"]) == ("127.0.0.1", "17672", "27672", "14369")
    assert table["registry"].probe.url == f"http://{API_HOST}:5050/v2/"
    assert (table["memcached"].probe.host, table["memcached"].probe.port) == ("127.0.0.1", 11311)


def test_service_table_lists_every_process_once_with_known_prerequisites():
    table = services.service_table()
    names = [service.name for service in table]
    assert len(names) == len(set(names)) == 21
    assert {"nova-conductor", "nova-scheduler", "nova-compute", "cinder-scheduler", "cinder-volume",
            "heat-engine", "astrostack-localnet"} <= set(names)
    for service in table:
        assert set(service.after) <= set(names)
        assert all(names.index(dep) < names.index(service.name) for dep in service.after)


def test_a_single_service_brings_what_it_needs():
    table = services.service_table()
    assert services.with_prerequisites(table, ["heat-api"]) == ["epmd", "mariadb", "rabbitmq", "memcached",
                                                                 "keystone", "heat-api"]
    with pytest.raises(InvalidInput, match="no such service: heat"):
        services.with_prerequisites(table, ["heat"])


def test_wsgi_launcher_hands_nova_its_paste_file_first():
    from astrostack_localcloud import wsgi

    env = wsgi.config_environment(wsgi.APIS["nova-api"], ["/x/etc/nova/nova.conf"])
    assert env == {"OS_NOVA_CONFIG_DIR": "/x/etc/nova", "OS_NOVA_CONFIG_FILES": "api-paste.ini;nova.conf"}
    assert wsgi.config_environment(wsgi.APIS["heat-api"], ["/x/heat.conf"]) == {}
    with pytest.raises(SystemExit):
        wsgi.parse_args(["keystone", "--config-file", "k.conf", "--bind", "0.0.0.0:15000"])


# --- supervision with real processes --------------------------------------------------


def _sleeper(name: str, *after: str) -> services.Service:
    return services.Service(name, ("sleep", "60"), after=after)


def test_supervisor_starts_once_and_stops_exactly_what_it_started():
    table = [_sleeper("one"), _sleeper("two", "one")]
    lines: list[str] = []
    sup = supervisor.Supervisor(table, lines.append, settle_s=0)
    try:
        assert sup.start(["two"], deadline_s=10) == ["one", "two"]
        pids = {name: sup.pid(name) for name in ("one", "two")}
        assert all(pids.values())
        again = supervisor.Supervisor(table, lines.append, settle_s=0)
        assert again.start(["two"], deadline_s=10) == []
        assert again.stop(["two"]) == ["two"]
        assert again.pid("two") is None and again.pid("one") == pids["one"]
    finally:
        sup.stop(["one", "two"])
    assert not supervisor.group_members(pids["one"])
    assert not table[0].pid_file.exists()


def test_after_a_reinstall_running_openstack_services_stop_to_start_on_the_new_code():
    from astrostack.local import controlplane

    infrastructure = next(iter(services.INFRASTRUCTURE))
    table = [_sleeper(infrastructure), _sleeper("heat-api"), _sleeper("neutron"), _sleeper("glance")]
    lines: list[str] = []
    sup = supervisor.Supervisor(table, lines.append, settle_s=0)
    try:
        sup.start([infrastructure, "heat-api", "neutron"], deadline_s=10)
        kept = sup.pid(infrastructure)
        controlplane._stop_services_running_old_code(sup, [s.name for s in table] + ["no-such"], lines.append)
        assert sup.pid("heat-api") is None and sup.pid("neutron") is None
        assert sup.pid(infrastructure) == kept            # MariaDB and the like do not load our code
        assert "astrostack_localcloud changed: restarting 2 running services on the new code" in lines
    finally:
        sup.stop([s.name for s in table])


def test_a_service_that_exits_while_starting_is_an_error_naming_its_log():
    table = [services.Service("broken", ("sh", "-c", "echo cannot bind; exit 3"))]
    sup = supervisor.Supervisor(table, lambda line: None, settle_s=1)
    with pytest.raises(LocalCloudError) as caught:
        sup.start(["broken"], deadline_s=10)
    message = str(caught.value)
    assert "broken exited (code 3)" in message and "cannot bind" in message
    assert str(layout.log_path("broken")) in message


def test_a_pid_file_of_another_process_is_not_ours():
    service = _sleeper("ghost")
    service.pid_file.write_text("1 12345\n")  # pid 1, but another start time
    sup = supervisor.Supervisor([service], lambda line: None)
    assert sup.pid("ghost") is None
    assert sup.stop(["ghost"]) == []  # and nothing is signalled


# --- clouds.yaml, databases, pins --------------------------------------------------------


def test_clouds_yaml_merge_keeps_other_entries_and_is_private(tmp_path):
    path = tmp_path / "openstack" / "clouds.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"clouds": {"kasi": {"auth": {"auth_url": "https://kasi.example/v3"}}},
                                    "cache": {"expiration_time": 5}}))
    secrets = {"keystone_astrostack": "user-secret", "keystone_admin": "admin-secret"}
    clouds_yaml.write(path, secrets)
    content = yaml.safe_load(path.read_text())
    assert content["cache"] == {"expiration_time": 5}
    assert content["clouds"]["kasi"] == {"auth": {"auth_url": "https://kasi.example/v3"}}
    user = content["clouds"]["astrostack-local"]
    assert user["auth"]["username"] == user["auth"]["project_name"] == "astrostack"
    assert user["auth"]["auth_url"] == f"http://{API_HOST}:15000/v3"
    assert content["clouds"]["astrostack-local-admin"]["auth"]["password"] == "admin-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["clouds.yaml"]  # no temp file left


def test_clouds_yaml_honours_os_client_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "mine.yaml"))
    assert clouds_yaml.clouds_yaml_path() == tmp_path / "mine.yaml"


def test_every_database_gets_its_user_and_grant():
    sql = databases.create_statements({f"db_{user}": f"pw-{user}" for user in
                                       ("keystone", "placement", "glance", "nova", "neutron", "cinder", "heat")})
    for database in ("keystone", "placement", "glance", "nova", "nova_api", "nova_cell0", "neutron", "cinder",
                     "heat"):
        assert f"CREATE DATABASE IF NOT EXISTS `{database}`" in sql
    assert "GRANT ALL PRIVILEGES ON `nova_cell0`.* TO 'nova'@'127.0.0.1';" in sql
    assert "'%'" not in sql  # users may connect from loopback only


def test_constraints_pin_the_seven_releases():
    pins = dict(line.split("==", 1) for line in install.constraints_file().read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = {name.lower(): version for name, version in pins.items()}
    assert {name: pins[name] for name in ("keystone", "openstack-placement", "glance", "nova", "neutron",
                                          "cinder", "openstack-heat")} == {
        "keystone": "30.0.0", "openstack-placement": "16.0.0", "glance": "33.0.0", "nova": "34.0.0",
        "neutron": "29.0.0", "cinder": "29.0.0", "openstack-heat": "27.0.1"}
    for extra in ("pymysql", "cheroot", "pyroute2", "python-memcached", "docker", "wheel"):
        assert extra in pins
    required = {requirement.split("==")[0].lower() for requirement in install.OPENSTACK_REQUIREMENTS}
    assert required <= set(pins)


def test_the_localcloud_package_digest_changes_with_its_source(tmp_path):
    source = tmp_path / "pkg"
    source.mkdir()
    (source / "a.py").write_text("x = 1\n")
    before = install.source_digest(source)
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "a.pyc").write_bytes(b"cache")
    assert install.source_digest(source) == before
    (source / "a.py").write_text("x = 2\n")
    assert install.source_digest(source) != before


def test_a_driver_of_another_package_reaches_nova_through_a_shim_in_nova_virt(tmp_path):
    nova_virt = tmp_path / "nova" / "virt"
    (nova_virt / "libvirt").mkdir(parents=True)
    (nova_virt / "fake.py").write_text("")
    assert config.ComputeDriver(config.FAKE_DRIVER, "").nova_setting(nova_virt) == config.FAKE_DRIVER
    setting = config.ComputeDriver(config.CONTAINER_DRIVER, "").nova_setting(nova_virt)
    assert setting == "astrostack_driver.ContainerDriver"
    shim = (nova_virt / "astrostack_driver.py").read_text()
    assert "from astrostack_localcloud.nova.driver import ContainerDriver" in shim


def test_sdk_and_keystoneauth_errors_become_one_line():
    import keystoneauth1.exceptions
    import openstack.exceptions

    from astrostack.local import bootstrap

    refused = keystoneauth1.exceptions.ConnectFailure("Unable to establish connection: refused\nmore")
    with pytest.raises(LocalCloudError, match=r"^bootstrap step flavors failed: .*refused"), \
            bootstrap.api_errors("bootstrap step flavors"):
        raise refused
    with pytest.raises(LocalCloudError) as caught, bootstrap.api_errors("putting the VM image in Glance"):
        raise openstack.exceptions.SDKException("Image upload\nfailed")
    assert "\n" not in str(caught.value)
