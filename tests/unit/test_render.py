"""What `render` writes, checked by meaning: the HOT templates are parsed and
their references resolved, the environment is compared with the spec, the
security groups are read rule by rule, and every user-data goes through the
real `cloud-init schema`.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from astrostack import render as render_module
from astrostack.errors import EXIT_INVALID_INPUT, InvalidInput, TemplateError
from astrostack.precheck import _evaluated
from astrostack.render import ROLES, render, render_user_data
from astrostack.spec import ClusterSpec, load_spec, spec_from_dict
from astrostack.validate import Report, check_rendered, fill_placeholders, validate

ROOT = Path(__file__).resolve().parents[2]
SAGECAL = ROOT / "examples" / "sagecal-openstack.yaml"
LOCAL = ROOT / "examples" / "local.yaml"
SCRIPTS = ROOT / "cloud_init" / "scripts"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKeyOnly astrostack-test"
KASI = {"name": "t1", "cloud": "kasi", "ssh": {"allowed_cidr": "198.51.100.0/24"}}

cloud_init = pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed")


# Helpers: read HOT the way Heat does ----------------------------------------


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def calls(node: Any, function: str) -> Iterator[Any]:
    """Arguments of every call of an intrinsic FUNCTION in a subtree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == function:
                yield value
            yield from calls(value, function)
    elif isinstance(node, list):
        for item in node:
            yield from calls(item, function)


def first(arg: Any) -> Any:
    return arg[0] if isinstance(arg, list) else arg


def resolve(node: Any, params: dict[str, Any]) -> Any:
    """Evaluate get_param (and the template's one yaql sum) with PARAMS."""
    if isinstance(node, dict) and set(node) == {"get_param"}:
        return params[node["get_param"]]
    if isinstance(node, dict) and set(node) == {"yaql"}:
        data = resolve(node["yaql"]["data"], params)
        match = re.fullmatch(r"\$\.data\.(\w+) \+ (\d+)", node["yaql"]["expression"])
        assert match, f"test resolver does not know this yaql: {node['yaql']['expression']}"
        return int(data[match.group(1)]) + int(match.group(2))
    if isinstance(node, dict):
        return {key: resolve(value, params) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, params) for item in node]
    return node


def of_type(template: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["resources"].items() if res["type"] == rtype}


def user_data_of(path: Path) -> dict[str, Any]:
    text = path.read_text()
    assert text.startswith("#cloud-config\n"), f"{path.name} does not start with #cloud-config"
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def written(user_data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["path"]: entry for entry in user_data["write_files"]}


def cluster_env(user_data: dict[str, Any]) -> dict[str, str]:
    """/etc/astrostack/cluster.env as bash would read it."""
    env = {}
    for line in written(user_data)["/etc/astrostack/cluster.env"]["content"].splitlines():
        if not line.strip():
            continue
        words = shlex.split(line)
        assert len(words) == 1, f"not one assignment: {line!r}"
        key, _, value = words[0].partition("=")
        assert re.fullmatch(r"[A-Z_][A-Za-z0-9_]*", key), f"not a shell variable: {key!r}"
        env[key] = value
    return env


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=120
    )


# Fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sagecal() -> ClusterSpec:
    return load_spec(SAGECAL)


@pytest.fixture(scope="module")
def out(sagecal, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("render") / "sagecal"
    render(sagecal, directory, ssh_public_key=PUBLIC_KEY)
    return directory


@pytest.fixture(scope="module")
def cluster(out) -> dict[str, Any]:
    return load(out / "cluster.yaml")


@pytest.fixture(scope="module")
def worker(out) -> dict[str, Any]:
    return load(out / "lib" / "worker.yaml")


@pytest.fixture(scope="module")
def environment(out) -> dict[str, Any]:
    return load(out / "environment.yaml")


@pytest.fixture(scope="module")
def params(cluster, environment) -> dict[str, Any]:
    """Every stack parameter as Heat would see it: defaults, then the environment."""
    values = {name: p.get("default") for name, p in cluster["parameters"].items()}
    values.update(environment["parameters"])
    return values


# The files -----------------------------------------------------------------


def test_render_writes_exactly_what_stack_create_needs(out):
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())

    assert files == [
        ".astrostack-render.json",  # what the render wrote, so that a later render overwrites only that
        "cluster.yaml",
        "environment.yaml",
        "lib/worker.yaml",
        "user-data/manager.yaml",
        "user-data/nfs.yaml",
        "user-data/worker.yaml",
    ]


def test_rendering_twice_into_the_same_directory_gives_the_same_files(sagecal, out, tmp_path):
    again = render(sagecal, tmp_path / "again", ssh_public_key=PUBLIC_KEY)

    for path in again.files():
        assert path.read_text() == (out / path.relative_to(again.directory)).read_text(), path.name


def test_render_refuses_an_output_path_that_is_a_file(sagecal, tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")

    with pytest.raises(InvalidInput) as caught:
        render(sagecal, target)
    assert caught.value.exit_code == EXIT_INVALID_INPUT
    assert target.read_text() == "mine"


# The HOT templates -----------------------------------------------------------


def test_templates_are_hot_2018_08_31(cluster, worker):
    for template in (cluster, worker):
        # YAML reads the bare date as a date; Heat reads its string form.
        assert str(template["heat_template_version"]) == "2018-08-31"


def test_cluster_template_has_the_resources_of_a_cluster(cluster):
    types = Counter(res["type"] for res in cluster["resources"].values())

    expected = {
        "OS::Neutron::Net": 1,
        "OS::Neutron::Subnet": 1,
        "OS::Neutron::Router": 1,
        "OS::Neutron::RouterInterface": 1,
        "OS::Neutron::SecurityGroup": 3,
        "OS::Cinder::Volume": 1,
        "OS::Cinder::VolumeAttachment": 1,
        "OS::Neutron::Port": 2,
        "OS::Neutron::FloatingIP": 1,
        "OS::Nova::Server": 2,
        "OS::Heat::ResourceGroup": 1,
        "OS::Heat::WaitConditionHandle": 2,
        "OS::Heat::WaitCondition": 2,
        "OS::Heat::RandomString": 1,
    }
    assert {t: types[t] for t in expected} == expected


def test_worker_group_members_are_the_nested_worker_template(out, cluster, environment, worker):
    (group,) = of_type(cluster, "OS::Heat::ResourceGroup").values()
    member_type = group["properties"]["resource_def"]["type"]

    target = environment["resource_registry"][member_type]
    assert (out / target).resolve() == (out / "lib" / "worker.yaml").resolve()
    assert Counter(r["type"] for r in worker["resources"].values()) == {
        "OS::Neutron::Port": 1, "OS::Nova::Server": 1, "OS::Heat::WaitConditionHandle": 1, "OS::Heat::WaitCondition": 1}
    # Every property the group passes is a parameter of the nested template, and
    # every parameter without a default is passed.
    passed = set(group["properties"]["resource_def"]["properties"])
    assert passed <= set(worker["parameters"])
    assert {p for p, d in worker["parameters"].items() if "default" not in d} <= passed


def test_every_wait_condition_has_its_own_handle(cluster):
    handles = of_type(cluster, "OS::Heat::WaitConditionHandle")
    waits = of_type(cluster, "OS::Heat::WaitCondition")
    used = [w["properties"]["handle"]["get_resource"] for w in waits.values()]

    assert sorted(used) == sorted(handles), "each handle serves exactly one wait condition"


@pytest.mark.parametrize("which", ["cluster", "worker"])
def test_every_reference_names_something_defined(out, which, cluster, worker):
    template, folder = (cluster, out) if which == "cluster" else (worker, out / "lib")
    parameters = set(template.get("parameters", {}))
    resources = set(template["resources"])
    conditions = set(template.get("conditions", {}) or {})

    used_params = {first(arg) for arg in calls(template, "get_param")}
    assert used_params <= parameters, f"undefined parameters: {used_params - parameters}"
    assert parameters <= used_params, f"parameters never used: {parameters - used_params}"
    for function in ("get_resource", "get_attr"):
        named = {first(arg) for arg in calls(template, function)}
        assert named <= resources, f"{function} of undefined resources: {named - resources}"
    for name, res in template["resources"].items():
        depends = res.get("depends_on", [])
        assert set([depends] if isinstance(depends, str) else depends) <= resources, name
        if "condition" in res:
            assert res["condition"] in conditions, name
    for arg in calls(template, "if"):
        assert arg[0] in conditions
    for target in calls(template, "get_file"):
        assert (folder / target).is_file(), f"get_file target {target} is missing next to the template"


def test_get_file_pulls_in_the_rendered_user_data_of_each_role(out, cluster):
    targets = {(out / t).resolve() for t in calls(cluster, "get_file")}

    assert targets == {(out / "user-data" / f"{role}.yaml").resolve() for role in ROLES}


def test_every_placeholder_in_a_user_data_is_filled_by_heat(out, cluster, worker):
    """str_replace must replace every __ASTROSTACK_*__ a user-data carries."""
    filled: dict[str, set[str]] = {}
    for arg in calls(cluster, "str_replace"):
        (target,) = calls(arg["template"], "get_file")
        filled[target] = set(arg["params"])
    # The workers' host id is filled in by the nested template, per member.
    for arg in calls(worker, "str_replace"):
        filled["user-data/worker.yaml"] |= set(arg["params"])

    for target, replaced in filled.items():
        present = set(re.findall(r"__ASTROSTACK_[A-Z_]+?__", (out / target).read_text()))
        assert present <= replaced, f"{target}: never replaced: {present - replaced}"


def test_heat_resource_estimate_covers_the_templates(sagecal, cluster, worker):
    """Heat counts nested resources too: the spec's limit check must not undercount."""
    per_worker = 1 + len(worker["resources"])  # the group member (a nested stack) + its resources

    assert len(cluster["resources"]) + sagecal.workers * per_worker <= sagecal.heat_resource_count()


# The environment ---------------------------------------------------------------


def test_environment_gives_exactly_the_template_parameters(cluster, environment):
    defined = cluster["parameters"]
    given = set(environment["parameters"])
    required = {name for name, p in defined.items() if "default" not in p}

    assert given - set(defined) == set(), "parameters cluster.yaml does not define"
    assert required - given == set(), "required parameters without a value"


def test_environment_values_come_from_the_spec(sagecal, params):
    assert params["cluster_name"] == "sagecal-12x96"
    assert params["worker_count"] == sagecal.hosts - 1 == 11
    assert (params["manager_flavor"], params["worker_flavor"], params["nfs_flavor"]) == (
        "m1.xlarge",
        "m1.xlarge",
        "m1.medium",
    )
    assert params["manager_image"] == params["worker_image"] == params["nfs_image"] == "debian-12"
    assert params["private_cidr"] == "10.20.0.0/24"
    assert params["allowed_ssh_cidr"] == "203.0.113.7/32"
    assert params["external_network"] == "public"
    assert params["dns_nameservers"].split(",") == ["8.8.8.8"]
    assert params["nfs_volume_size"] == 500
    assert (params["nfs_export_path"], params["share_mount_point"]) == ("/export/share", "/mnt/share")
    assert params["hosts_timeout"] == 1200
    tags = params["cluster_tags"].split(",")
    assert tags[0] == "astrostack-cluster=sagecal-12x96"
    assert {"project=ska-sdp", "benchmark=table1"} <= set(tags)
    assert params["ssh_public_key"] == PUBLIC_KEY and params["key_name"] == ""


def test_an_existing_keypair_replaces_the_generated_one(tmp_path):
    spec = spec_from_dict({**KASI, "ssh": {**KASI["ssh"], "keypair": "office"}})
    rendered = render(spec, tmp_path / "kp", ssh_public_key=PUBLIC_KEY)
    given = load(rendered.environment)["parameters"]

    assert (given["key_name"], given["ssh_public_key"]) == ("office", "")


def _violations(template: dict[str, Any], values: dict[str, Any]) -> list[str]:
    problems = []
    for name, definition in template["parameters"].items():
        value = values.get(name, definition.get("default"))
        for constraint in definition.get("constraints", []):
            if "range" in constraint:
                low, high = constraint["range"].get("min"), constraint["range"].get("max")
                if (low is not None and value < low) or (high is not None and value > high):
                    problems.append(f"{name}={value} outside {constraint['range']}")
            if "allowed_pattern" in constraint and not re.fullmatch(constraint["allowed_pattern"], str(value)):
                problems.append(f"{name}={value!r} does not match {constraint['allowed_pattern']}")
    return problems


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"hosts": 1, "nodes": 1}, id="one-host"),
        pytest.param({"hosts": 196, "nodes": 196, "overlay": {"subnet": "10.1.0.0/16"},
                      "network": {"cidr": "10.10.0.0/16"}}, id="heat-limit"),
        pytest.param({"timeouts": {"hosts_ready": 60}}, id="shortest-timeout"),
        pytest.param({"timeouts": {"hosts_ready": 43200}}, id="longest-timeout"),
        pytest.param({"name": "a" * 32}, id="longest-name"),
    ],
)
def test_valid_specs_give_values_within_the_template_constraints(tmp_path, overrides):
    spec = spec_from_dict({**KASI, **overrides})
    rendered = render(spec, tmp_path / "c", ssh_public_key=PUBLIC_KEY)

    assert _violations(load(rendered.template), load(rendered.environment)["parameters"]) == []


# Security groups -------------------------------------------------------------


def _groups_of(node: Any) -> set[str]:
    return {arg for arg in calls(node, "get_resource")}


def rules_in_mode(rules: Any, mode: str) -> list[dict[str, Any]]:
    """A group's rules as Heat resolves them in MODE (list_concat, if mpi_mode)."""
    return _evaluated(rules, {"mpi_mode": mode == "mpi", "task_queue": mode == "task-queue"})


@pytest.fixture(scope="module", params=["swarm", "mpi"])
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def groups(cluster, mode) -> dict[str, list[dict[str, Any]]]:
    """The security groups by what they guard, found from where they are attached, in one mode."""
    resources = cluster["resources"]
    sgs = set(of_type(cluster, "OS::Neutron::SecurityGroup"))
    manager = _groups_of(resources["manager_port"]["properties"]["security_groups"]) & sgs
    (group,) = of_type(cluster, "OS::Heat::ResourceGroup").values()
    workers = _groups_of(group["properties"]["resource_def"]["properties"]["security_groups"]) & sgs
    nfs = _groups_of(resources["nfs_port"]["properties"]["security_groups"]) & sgs
    (members,) = manager & workers
    (manager_only,) = manager - workers
    (nfs_only,) = nfs
    assert len({members, manager_only, nfs_only}) == 3
    return {name: rules_in_mode(resources[sg]["properties"]["rules"], mode) for name, sg in
            (("members", members), ("manager", manager_only), ("nfs", nfs_only))}


def _ports(rule: dict[str, Any]) -> range:
    low = rule.get("port_range_min", 1)
    return range(low, rule.get("port_range_max", 65535 if "port_range_min" not in rule else low) + 1)


def _opens(rule: dict[str, Any], protocol: str, port: int) -> bool:
    return str(rule.get("protocol")) == protocol and port in _ports(rule)


def test_ssh_to_the_manager_only_from_the_allowed_cidr(groups, params, sagecal):
    manager_rules = groups["manager"]

    assert manager_rules, "the manager-ssh group has rules"
    for rule in manager_rules:
        assert resolve(rule["remote_ip_prefix"], params) == sagecal.ssh.allowed_cidr
        assert "remote_mode" not in rule or rule["remote_mode"] == "remote_ip_prefix"
    assert any(_opens(rule, "tcp", 22) for rule in manager_rules)


MODE_PORTS = {
    "swarm": [("tcp", 22), ("tcp", 2377), ("tcp", 7946), ("udp", 7946), ("udp", 4789), ("50", 1)],
    "mpi": [("tcp", 22), ("tcp", 2222), ("tcp", 40000), ("tcp", 40999)],
}


def test_members_open_exactly_what_their_mode_uses_and_only_to_each_other(groups, mode):
    members = groups["members"]
    other = "mpi" if mode == "swarm" else "swarm"

    for rule in members:
        assert rule.get("remote_mode") == "remote_group_id", rule
        assert "remote_ip_prefix" not in rule, rule
        assert "remote_group_id" not in rule, f"the members group must point at itself: {rule}"
    for protocol, port in MODE_PORTS[mode]:
        assert any(_opens(rule, protocol, port) for rule in members), f"{mode}: {port}/{protocol} is not open"
    for protocol, port in set(MODE_PORTS[other]) - set(MODE_PORTS[mode]):
        assert not any(_opens(rule, protocol, port) for rule in members), f"{mode} opens {other}'s {port}/{protocol}"


def test_nfs_only_from_the_private_network(groups, params, sagecal):
    nfs_rules = [rule for rule in groups["nfs"] if _opens(rule, "tcp", 2049)]

    assert nfs_rules
    for rule in nfs_rules:
        assert resolve(rule["remote_ip_prefix"], params) == sagecal.network.cidr
    for name in ("members", "manager"):
        assert not any(_opens(rule, "tcp", 2049) for rule in groups[name]), f"{name} opens NFS"


def test_no_rule_is_open_to_the_world(cluster, params, mode):
    for name, sg in of_type(cluster, "OS::Neutron::SecurityGroup").items():
        for rule in rules_in_mode(sg["properties"]["rules"], mode):
            if rule.get("remote_mode") == "remote_group_id":
                continue
            assert "remote_ip_prefix" in rule, f"{name}: a rule without a remote is open to 0.0.0.0/0: {rule}"
            prefix = ipaddress.ip_network(resolve(rule["remote_ip_prefix"], params))
            assert prefix.prefixlen > 0, f"{name}: {rule}"


def test_only_the_manager_is_reachable_from_outside_the_cluster(cluster):
    floating = of_type(cluster, "OS::Neutron::FloatingIP")

    assert [fip["properties"]["port_id"]["get_resource"] for fip in floating.values()] == ["manager_port"]


# Secrets --------------------------------------------------------------------


def test_no_output_exposes_a_secret(cluster, worker):
    secret_types = {"OS::Heat::RandomString", "OS::Nova::KeyPair", "OS::Heat::WaitConditionHandle"}
    for template in (cluster, worker):
        secret = {name for name, r in template["resources"].items() if r["type"] in secret_types}
        outputs = template.get("outputs", {})
        for name, output in outputs.items():
            referenced = {first(a) for f in ("get_attr", "get_resource") for a in calls(output, f)}
            assert not referenced & secret, f"output {name} exposes {referenced & secret}"
            assert not {first(a) for a in calls(output, "get_param")} & {"user_data", "ssh_public_key"}
            for arg in calls(output, "get_attr"):
                assert not {"token", "private_key", "value"} & set(arg[1:2]), f"output {name}: {arg}"


def test_the_worker_user_data_parameter_is_hidden(worker):
    assert worker["parameters"]["user_data"]["hidden"] is True


def test_the_cluster_secret_reaches_hosts_only_through_user_data(cluster):
    for name, res in cluster["resources"].items():
        for arg in calls(res.get("properties", {}), "get_attr"):
            if first(arg) == "cluster_secret":
                replaced = [p for s in calls(res["properties"], "str_replace") for p in s["params"].items()]
                assert ("__ASTROSTACK_SECRET__", {"get_attr": arg}) in replaced, name


def test_every_host_signals_a_wait_condition_of_its_own(cluster, worker):
    """One server signals each handle, once: the manager and the NFS server in the
    cluster template, each worker in its own nested stack (a fresh token per worker)."""
    for template in (cluster, worker):
        resources = template["resources"]
        for wait in of_type(template, "OS::Heat::WaitCondition").values():
            handle = wait["properties"]["handle"]["get_resource"]
            signallers = [name for name, res in resources.items() if res["type"] == "OS::Nova::Server"
                          and any(first(a) == handle for a in calls(res["properties"]["user_data"], "get_attr"))]
            assert len(signallers) == 1 and wait["properties"]["count"] == 1, (handle, signallers)
    group = next(iter(of_type(cluster, "OS::Heat::ResourceGroup").values()))
    assert not calls(group["properties"]["resource_def"]["properties"]["user_data"], "get_attr") or all(
        first(a) != "manager_handle" for a in calls(group["properties"]["resource_def"], "get_attr"))


# The user-data ----------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_user_data_is_a_cloud_config(out, role):
    data = user_data_of(out / "user-data" / f"{role}.yaml")

    assert set(written(data)) >= {"/etc/astrostack/cluster.env", "/etc/astrostack/signal", "/etc/astrostack/secret"}


@pytest.mark.parametrize("role", ROLES)
def test_cluster_env_carries_the_spec(out, role, sagecal):
    env = cluster_env(user_data_of(out / "user-data" / f"{role}.yaml"))

    assert env["CLUSTER"] == "sagecal-12x96"
    assert env["ROLE"] == role
    assert env["HOST_ID"] == {"nfs": "nfs", "manager": "manager", "worker": "__ASTROSTACK_HOST_ID__"}[role]
    assert (env["HOSTS"], env["NODES"], env["MODE"]) == ("12", "96", "swarm")
    assert (env["OVERLAY_NAME"], env["OVERLAY_SUBNET"], env["OVERLAY_ENCRYPTED"]) == (
        "sagecal-net",
        "10.0.9.0/24",
        "true",
    )
    assert (env["MOUNT_POINT"], env["EXPORT_PATH"]) == ("/mnt/share", "/export/share")
    assert env["PRIVATE_CIDR"] == "10.20.0.0/24"
    assert env["APP_IMAGE"] == "astrostack/sagecal:0.8.5"
    assert env["SLOTS"] == "1" and env["NODES_TIMEOUT"] == "900"
    assert env["REGISTRY"] == ""
    if role == "nfs":
        assert env["VOLUME_ID"] == "__ASTROSTACK_VOLUME_ID__"
    else:
        assert (env["NFS_IP"], env["MANAGER_IP"]) == ("__ASTROSTACK_NFS_IP__", "__ASTROSTACK_MANAGER_IP__")
    assert not any(key.startswith("FAULT_") for key in env)


@pytest.mark.parametrize("role", ROLES)
def test_signal_and_secret_files_are_private(out, role):
    files = written(user_data_of(out / "user-data" / f"{role}.yaml"))

    for path in ("/etc/astrostack/signal", "/etc/astrostack/secret"):
        assert int(str(files[path]["permissions"]), 8) == 0o600, path
        assert files[path].get("owner", "root:root") == "root:root"


@pytest.mark.parametrize("role", ROLES)
def test_runcmd_runs_the_role_script_which_is_embedded_verbatim(out, role):
    data = user_data_of(out / "user-data" / f"{role}.yaml")
    files = written(data)
    commands = [cmd if isinstance(cmd, list) else shlex.split(cmd) for cmd in data["runcmd"]]
    role_script = f"/usr/local/sbin/astrostack-{role}"

    assert [role_script] in commands
    assert int(str(files[role_script]["permissions"]), 8) & 0o111
    assert files[role_script]["content"] == (SCRIPTS / f"{role}.sh").read_text()
    assert files["/usr/local/lib/astrostack/common.sh"]["content"] == (SCRIPTS / "common.sh").read_text()
    originals = {p.read_text() for p in SCRIPTS.glob("*.sh")}
    for path, entry in files.items():
        if path.startswith(("/usr/local/sbin/", "/usr/local/lib/astrostack/")):
            assert entry["content"] in originals, f"{path} differs from every file in cloud_init/scripts"


@pytest.mark.parametrize("role", ROLES)
def test_each_host_installs_the_packages_its_role_needs_when_the_image_lacks_them(out, role):
    data = user_data_of(out / "user-data" / f"{role}.yaml")
    env = cluster_env(data)

    needed = {"nfs": {"nfs-kernel-server", "docker-registry"}, "manager": {"docker.io", "nfs-common"},
              "worker": {"docker.io", "nfs-common"}}
    assert needed[role] <= set(env["PACKAGES"].split())
    assert env["INSTALL_PACKAGES"] == "true"
    assert "packages" not in data, "no cloud-init apt run: the host script installs only what is missing"


@cloud_init
@pytest.mark.parametrize("role", ROLES)
def test_cloud_init_accepts_every_user_data(out, role, tmp_path):
    filled = tmp_path / f"{role}.yaml"
    filled.write_text(fill_placeholders((out / "user-data" / f"{role}.yaml").read_text()))

    assert re.findall(r"__ASTROSTACK_[A-Z_]+?__", filled.read_text()) == []
    result = cloud_init_schema(filled)
    assert result.returncode == 0, result.stdout + result.stderr


@cloud_init
@pytest.mark.parametrize(
    "body",
    [
        pytest.param("packages: 5\n", id="packages-not-a-list"),
        pytest.param("write_files: [{path: 1, permissions: []}]\n", id="write-files-wrong-types"),
        pytest.param("runcmd: {run: me}\n", id="runcmd-not-a-list"),
    ],
)
def test_cloud_init_schema_check_can_fail(tmp_path, body):
    """Negative control: the schema check above would notice a wrong type."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\n" + body)

    assert cloud_init_schema(bad).returncode != 0


@cloud_init
def test_cloud_init_schema_check_fails_on_a_broken_rendered_user_data(out, tmp_path):
    data = yaml.safe_load(fill_placeholders((out / "user-data" / "manager.yaml").read_text()))
    data["write_files"][1]["permissions"] = []
    bad = tmp_path / "manager.yaml"
    bad.write_text("#cloud-config\n" + yaml.safe_dump(data))

    assert cloud_init_schema(bad).returncode != 0


# Other modes, other clouds ------------------------------------------------------------


@pytest.fixture(scope="module")
def mpi_out(tmp_path_factory) -> Path:
    spec = spec_from_dict({**KASI, "mode": "mpi", "hosts": 4, "nodes": 2000, "application": {"slots_per_node": 2}})
    directory = tmp_path_factory.mktemp("mpi")
    render(spec, directory, ssh_public_key=PUBLIC_KEY)
    return directory


@pytest.mark.parametrize("role", ROLES)
def test_mpi_mode_renders_its_settings(mpi_out, role):
    env = cluster_env(user_data_of(mpi_out / "user-data" / f"{role}.yaml"))

    assert (env["MODE"], env["HOSTS"], env["NODES"], env["SLOTS"]) == ("mpi", "4", "2000", "2")
    assert load(mpi_out / "environment.yaml")["parameters"]["worker_count"] == 3


@cloud_init
@pytest.mark.parametrize("role", ROLES)
def test_cloud_init_accepts_mpi_user_data(mpi_out, role, tmp_path):
    filled = tmp_path / f"{role}.yaml"
    filled.write_text(fill_placeholders((mpi_out / "user-data" / f"{role}.yaml").read_text()))

    result = cloud_init_schema(filled)
    assert result.returncode == 0, result.stdout + result.stderr


def test_faults_reach_every_host_as_fault_variables():
    spec = spec_from_dict(
        {
            **KASI,
            "name": "faulty",
            "faults": [
                {"host": "worker-1", "fault": "never-signal"},
                {"host": "nfs", "fault": "cloud-init-fail"},
                {"host": "manager", "fault": "die-after-boot"},
            ],
        }
    )
    for role in ROLES:
        env = cluster_env(yaml.safe_load(render_user_data(spec, role)))
        faults = {key: value for key, value in env.items() if key.startswith("FAULT_")}
        assert faults == {
            "FAULT_worker_1": "never-signal",
            "FAULT_nfs": "cloud-init-fail",
            "FAULT_manager": "die-after-boot",
        }


def test_values_with_shell_characters_are_quoted_for_bash(tmp_path):
    spec = spec_from_dict({**KASI, "application": {"image": "registry.example.org:5000/astro/sagecal@sha256:" + "a" * 64}})
    env = cluster_env(yaml.safe_load(render_user_data(spec, "worker")))

    assert env["APP_IMAGE"] == spec.application.image


def test_the_local_example_renders_what_any_cloud_gets(tmp_path, sagecal):
    spec = load_spec(LOCAL)
    rendered = render(spec, tmp_path / "local", ssh_public_key=PUBLIC_KEY)
    real = render(sagecal, tmp_path / "real", ssh_public_key=PUBLIC_KEY)
    environment = load(rendered.environment)

    assert environment["resource_registry"] == load(real.environment)["resource_registry"] == {
        "Astrostack::Worker": "lib/worker.yaml"}
    assert (rendered.template.read_text(), (rendered.directory / "lib" / "worker.yaml").read_text()) == (
        real.template.read_text(), (real.directory / "lib" / "worker.yaml").read_text())
    for role in ROLES:
        assert cluster_env(user_data_of(rendered.user_data[role]))["OVERLAY_ENCRYPTED"] == "auto"
    assert environment["parameters"]["allowed_ssh_cidr"] == "172.24.4.1/32"
    report = Report()
    check_rendered(rendered, report)
    assert report.failures() == []


# validate: its checks find what they are for ---------------------------------


def test_validate_passes_the_example_with_every_check_run(sagecal):
    report = validate(sagecal)

    assert report.ok, report.failures()
    if shutil.which("cloud-init") and shutil.which("shellcheck"):
        assert [c.name for c in report.checks if c.skipped] == []


def test_validate_catches_a_template_that_refers_to_nothing(sagecal, tmp_path):
    rendered = render(sagecal, tmp_path / "broken", ssh_public_key=PUBLIC_KEY)
    template = load(rendered.template)
    template["resources"]["network"]["properties"]["mtu"] = {"get_param": "no_such_parameter"}
    rendered.template.write_text(yaml.safe_dump(template))
    report = Report()

    check_rendered(rendered, report)

    (failure,) = report.failures()
    assert failure.name == "template cluster.yaml"
    assert "no_such_parameter" in failure.detail


# Jinja ---------------------------------------------------------------------


def test_templates_render_with_strict_undefined():
    env = render_module._jinja_env()

    with pytest.raises(jinja2.UndefinedError):
        env.from_string("value: {{ not_defined }}\n").render()
    assert isinstance(jinja2.UndefinedError("x"), jinja2.TemplateError)


def test_an_undefined_variable_in_host_template_is_an_input_error():
    env = render_module._jinja_env()
    env.loader = jinja2.DictLoader({"host.yaml.j2": "#cloud-config\nwrite_files: {{ spec.no_such_field }}\n"})

    with pytest.raises(TemplateError) as caught:
        render_user_data(spec_from_dict(KASI), "manager", env)
    assert caught.value.exit_code == EXIT_INVALID_INPUT
    assert "\n" not in str(caught.value)


def test_shquote_filter_makes_one_shell_word():
    env = render_module._jinja_env()
    value = "it's a $HOME `x` value"

    assert shlex.split(env.from_string("{{ v | shquote }}").render(v=value)) == [value]


def test_the_neighbour_table_is_linux_default_for_small_clusters_and_grows_with_the_nodes():
    small = spec_from_dict({**KASI, "hosts": 3, "nodes": 12})
    large = spec_from_dict({**KASI, "hosts": 10, "nodes": 200, "overlay": {"subnet": "10.8.0.0/23"}})
    mpi = spec_from_dict({**KASI, "mode": "mpi", "hosts": 10, "nodes": 200})

    assert render_module.neighbour_table(small) == render_module.NEIGH_DEFAULTS
    # 2 x 20 containers on a host, each with an entry per node, and the overlay's own:
    # far above the 1024 that overflowed at 10 x 200.
    low, soft, hard = render_module.neighbour_table(large)
    assert (low, soft) == (128, 40 * 200 + 200 + 256) and hard == 2 * soft
    assert render_module.neighbour_table(mpi)[2] < hard  # one container per host, on the host network


def _size_neighbour_table(tmp_path: Path, wanted: str, now: tuple[int, int, int] | None) -> str:
    """size_neighbour_table from common.sh against a folder of gc_thresh files (None: no such
    folder, as inside a container-VM, whose network namespace has no neigh/default)."""
    folder = tmp_path / "neigh"
    if now is not None:
        folder.mkdir()
        for i, value in enumerate(now, 1):
            (folder / f"gc_thresh{i}").write_text(f"{value}\n")
    common = (SCRIPTS / "common.sh").read_text()
    functions = "\n".join(re.findall(r"^(?:raise_to\(\).*?|size_neighbour_table\(\) \{.*?^\})$", common, re.M | re.S))
    script = (f"set -euo pipefail\nlog() {{ echo \"$*\"; }}\nfail() {{ echo \"FAIL $*\"; exit 1; }}\n{functions}\n"
              f"NEIGH_GC_THRESH={shlex.quote(wanted)} NEIGH_DIR={folder} NEIGH_CONF={tmp_path}/neigh.conf "
              "size_neighbour_table\n")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_host_raises_its_neighbour_table_never_lowers_it_and_keeps_it_for_a_reboot(tmp_path):
    said = _size_neighbour_table(tmp_path, "128 8456 16912", now=(1024, 512, 1024))

    folder = tmp_path / "neigh"
    assert [int((folder / f"gc_thresh{i}").read_text()) for i in (1, 2, 3)] == [1024, 8456, 16912]
    assert "net.ipv4.neigh.default.gc_thresh3 = 16912" in (tmp_path / "neigh.conf").read_text()
    assert "gc_thresh1-3 128 8456 16912" in said


def test_a_host_with_a_large_enough_table_leaves_it(tmp_path):
    said = _size_neighbour_table(tmp_path, "128 512 1024", now=(128, 512, 4096))

    assert said == "" and not (tmp_path / "neigh.conf").exists()


def test_a_host_whose_kernel_is_shared_says_it_cannot_size_the_table(tmp_path):
    said = _size_neighbour_table(tmp_path, "128 8456 16912", now=None)

    assert "not this host's to size" in said and "16912" in said
    assert not (tmp_path / "neigh.conf").exists()


def test_the_address_outputs_the_tool_reads_are_the_templates(cluster):
    from astrostack.cluster.access import NFS_ADDRESS_OUTPUT, WORKER_ADDRESSES_OUTPUT

    assert {NFS_ADDRESS_OUTPUT, WORKER_ADDRESSES_OUTPUT} <= set(cluster["outputs"])


def test_the_servers_are_named_as_the_tool_names_them(cluster):
    """server_name() and worker_host() spell what the templates join: the console
    evidence, the drain of removed workers and the silent-host story find servers by it."""
    from astrostack.spec import server_name, worker_host

    joined = cluster["resources"]["manager"]["properties"]["name"]["list_join"]
    assert joined == ["-", [{"get_param": "cluster_name"}, "manager"]]
    assert server_name("c", "manager") == "c-manager"
    workers = cluster["resources"]["workers"]["properties"]["resource_def"]["properties"]
    assert workers["name"]["list_join"][1][1] == worker_host("%index%")
    assert workers["host_id"] == worker_host("%index%")
