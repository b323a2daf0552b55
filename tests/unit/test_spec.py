"""The cluster spec: defaults, derived values, the JSON Schema and bad specs.

Every bad spec must raise SpecError (exit 2) with ONE line that names the
field at fault, in the shape `SOURCE: FIELD: what is wrong`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from astrostack.bench.matrix import merged
from astrostack.errors import EXIT_INVALID_INPUT, SpecError
from astrostack.spec import (
    ClusterSpec,
    Mode,
    OnFailure,
    json_schema,
    load_spec,
    parse_spec,
    spec_from_dict,
    starter_spec,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SOURCE = "bad.yaml"
# A valid spec on a real cloud: everything a bad case changes starts from here.
KASI = {"name": "t1", "cloud": "kasi", "ssh": {"allowed_cidr": "198.51.100.0/24"}}
# What every spec must say besides its name.
SSH = {"allowed_cidr": "172.24.4.1/32"}
REQUIRED = {"ssh": SSH}


def without(data: dict, dotted: str) -> dict:
    out = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    del node[last]
    return out


def spec_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, source=SOURCE)
    return caught.value


def blamed_field(error: SpecError) -> str:
    """FIELD of `SOURCE: FIELD: message`, after checking the shape."""
    message = str(error)
    assert "\n" not in message, f"not one line: {message!r}"
    source, field, reason = message.split(": ", 2)
    assert source == SOURCE
    assert reason.strip(), f"no reason given: {message!r}"
    return field


# Defaults and derived values ---------------------------------------------


def test_only_name_is_required_and_defaults_are_the_documented_ones():
    spec = ClusterSpec(name="demo", ssh=SSH)

    assert (spec.cloud, spec.mode, spec.hosts, spec.nodes) == ("local", Mode.swarm, 3, 12)
    assert spec.on_failure is OnFailure.rollback
    assert spec.servers.image == "debian-12"
    assert (spec.servers.manager.flavor, spec.servers.worker.flavor, spec.servers.nfs.flavor) == (
        "m1.large",
        "m1.large",
        "m1.small",
    )
    assert spec.ssh.keypair is None
    assert spec.network.cidr == "10.10.0.0/24" and spec.network.dns_nameservers == ["8.8.8.8"]
    assert (spec.nfs.volume_size_gb, spec.nfs.export_path, spec.nfs.mount_point) == (100, "/export/share", "/mnt/share")
    assert (spec.overlay.name, spec.overlay.subnet, spec.overlay.encrypted) == ("astro-net", "10.0.9.0/24", "auto")
    assert spec.registry.url is None and spec.registry.insecure is True
    assert spec.application.image == "astrostack/mpi-base:latest" and spec.application.slots_per_node == 1
    timeouts = spec.timeouts
    assert (timeouts.stack_create, timeouts.hosts_ready, timeouts.nodes_ready, timeouts.delete) == (900, 900, 600, 600)
    assert timeouts.total == 900 + 900 + 600
    assert spec.tags == [] and spec.faults == []
    assert spec.servers.install_packages is True


def test_every_cloud_gets_the_same_defaults_for_packages_and_encryption():
    local = ClusterSpec(name="demo", ssh=SSH)
    real = spec_from_dict(KASI)

    assert (local.servers.install_packages, local.overlay.encrypted) == (True, "auto")
    assert (real.servers.install_packages, real.overlay.encrypted) == (True, "auto")
    assert spec_from_dict(merged(KASI, {"overlay": {"encrypted": True}})).overlay.encrypted is True


@pytest.mark.parametrize(("hosts", "nodes"), [(1, 1), (3, 12), (12, 96), (5, 17), (7, 7), (12, 1000), (100, 400)])
def test_ranks_spread_over_every_host_evenly_manager_first(hosts, nodes):
    spec = spec_from_dict(
        {**REQUIRED, "name": "spread", "hosts": hosts, "nodes": nodes, "overlay": {"subnet": "10.0.8.0/21"},
         "network": {"cidr": "10.10.0.0/23"}}
    )
    ranks = spec.ranks_per_host()

    assert spec.workers == hosts - 1
    assert spec.host_names() == ["manager"] + [f"worker-{i}" for i in range(hosts - 1)]
    assert len(ranks) == hosts
    assert sum(ranks) == nodes
    assert min(ranks) >= 1
    assert max(ranks) - min(ranks) <= 1
    assert ranks == sorted(ranks, reverse=True), "the extra ranks go to the first hosts (the master's)"


def test_spec_hash_is_stable_and_ignores_key_order():
    text = (EXAMPLES / "sagecal-openstack.yaml").read_text()
    data = yaml.safe_load(text)
    reordered = dict(reversed(list(data.items())))

    first = parse_spec(text).spec_hash()
    assert first == parse_spec(text).spec_hash()
    assert first == spec_from_dict(reordered).spec_hash()
    assert len(first) == 16 and int(first, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"nodes": 97},
        {"overlay": {"encrypted": False}},
        {"servers": {"worker": {"flavor": "m1.large"}}},
        {"tags": ["project=ska-sdp"]},
        {"timeouts": {"delete": 601}},
    ],
)
def test_spec_hash_changes_with_any_field(change):
    data = yaml.safe_load((EXAMPLES / "sagecal-openstack.yaml").read_text())

    assert spec_from_dict(merged(data, change)).spec_hash() != spec_from_dict(data).spec_hash()


def test_a_default_written_out_hashes_like_the_default_left_out():
    assert spec_from_dict({**REQUIRED, "name": "demo"}).spec_hash() == spec_from_dict({**REQUIRED, "name": "demo", "hosts": 3}).spec_hash()


def test_trailing_slashes_of_paths_are_dropped():
    spec = spec_from_dict({**REQUIRED, "name": "demo", "nfs": {"mount_point": "/mnt/share/", "export_path": "/export/x/"}})

    assert (spec.nfs.mount_point, spec.nfs.export_path) == ("/mnt/share", "/export/x")


def test_heat_limit_allows_exactly_up_to_the_advertised_host_count():
    big = {**REQUIRED, "name": "big", "overlay": {"subnet": "10.1.0.0/16"}, "network": {"cidr": "10.10.0.0/16"}}
    error = pytest.raises(SpecError, spec_from_dict, merged(big, {"hosts": 400, "nodes": 400})).value
    max_hosts = int(str(error).rsplit("use at most ", 1)[1].split()[0])

    at_limit = spec_from_dict(merged(big, {"hosts": max_hosts, "nodes": max_hosts}))
    assert at_limit.heat_resource_count() <= 1000
    with pytest.raises(SpecError):
        spec_from_dict(merged(big, {"hosts": max_hosts + 1, "nodes": max_hosts + 1}))


def test_overlay_capacity_boundary_is_where_the_message_says():
    # A /24 holds 256 addresses: 3 reserved and one per host; the nodes need room
    # for half of them to be replaced at once: 166 + 83 <= 250 < 167 + 84.
    fits = spec_from_dict({**REQUIRED, "name": "o", "hosts": 3, "nodes": 166})
    assert fits.nodes == 166
    error = pytest.raises(SpecError, spec_from_dict, {**REQUIRED, "name": "o", "hosts": 3, "nodes": 167}, SOURCE).value
    assert blamed_field(error) == "overlay.subnet"
    assert "167 nodes need 251" in str(error)
    suggested = str(error).rsplit("use a /", 1)[1].split()[0]
    spec_from_dict({**REQUIRED, "name": "o", "hosts": 3, "nodes": 167, "overlay": {"subnet": f"10.0.8.0/{suggested}"}})


def test_mpi_mode_needs_no_overlay_room():
    spec = spec_from_dict({**REQUIRED, "name": "m", "mode": "mpi", "hosts": 3, "nodes": 3000})

    assert spec.mode is Mode.mpi and sum(spec.ranks_per_host()) == 3000


# The starter spec and the JSON Schema ------------------------------------


def test_starter_spec_validates_and_spells_out_the_defaults():
    starter = parse_spec(starter_spec())

    assert starter.model_dump() == ClusterSpec(name="my-cluster", ssh=SSH).model_dump()


def test_starter_spec_for_a_real_cloud_validates_with_an_ssh_cidr():
    starter = parse_spec(starter_spec(name="prod-1", cloud="kasi"))

    assert (starter.name, starter.cloud) == ("prod-1", "kasi")
    assert starter.ssh.allowed_cidr is not None


def test_starter_spec_refuses_a_bad_name():
    with pytest.raises(SpecError):
        starter_spec(name="Not_DNS")


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    if "allOf" in node and len(node["allOf"]) == 1:
        return _resolve(schema, node["allOf"][0])
    return node


def test_json_schema_is_a_closed_draft_2020_12_object_schema():
    schema = json_schema()
    schema = json.loads(json.dumps(schema))  # it is plain JSON

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["required"] == ["name"]
    assert set(schema["properties"]) == set(ClusterSpec.model_fields)
    assert schema["additionalProperties"] is False
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema["$defs"], ref
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, f"{name} accepts unknown fields"


def test_json_schema_enums_and_defaults_match_the_model():
    schema = json_schema()
    props = schema["properties"]
    defaults = ClusterSpec(name="x", ssh=SSH)

    assert set(_resolve(schema, props["mode"])["enum"]) == {m.value for m in Mode}
    assert set(_resolve(schema, props["on_failure"])["enum"]) == {o.value for o in OnFailure}
    for field in ("cloud", "hosts", "nodes"):
        assert props[field]["default"] == getattr(defaults, field)
    assert (props["hosts"]["minimum"], props["hosts"]["maximum"]) == (1, 1000)
    timeouts = _resolve(schema, props["timeouts"])["properties"]
    assert {k: v["default"] for k, v in timeouts.items()} == defaults.timeouts.model_dump()
    fault = _resolve(schema, schema["$defs"]["Fault"]["properties"]["fault"])
    assert set(fault["enum"]) == {"cloud-init-fail", "never-signal", "die-after-boot"}


def test_examples_validate():
    specs = [p for p in sorted(EXAMPLES.glob("*.yaml")) if not p.name.startswith("bench-")]
    assert specs
    for path in specs:
        assert load_spec(path).name


# Bad specs ---------------------------------------------------------------

OPEN_OVERLAY = {"overlay": {"subnet": "10.1.0.0/16"}, "network": {"cidr": "10.10.0.0/16"}}

BAD_SPECS = [
    # (id, spec as a dict, field the message must blame)
    ("name-upper-case", merged(KASI, {"name": "Sagecal"}), "name"),
    ("name-too-long", merged(KASI, {"name": "a" * 33}), "name"),
    ("name-leading-digit", merged(KASI, {"name": "1cluster"}), "name"),
    ("name-missing", without(KASI, "name"), "name"),
    ("name-not-a-string", merged(KASI, {"name": 42}), "name"),
    ("unknown-top-level-field", merged(KASI, {"hostz": 3}), "hostz"),
    ("unknown-nested-field", merged(KASI, {"servers": {"flavour": "m1.large"}}), "servers.flavour"),
    ("mode-wrong-enum", merged(KASI, {"mode": "kubernetes"}), "mode"),
    ("on-failure-wrong-enum", merged(KASI, {"on_failure": "explode"}), "on_failure"),
    ("hosts-zero", merged(KASI, {"hosts": 0}), "hosts"),
    ("hosts-negative", merged(KASI, {"hosts": -3}), "hosts"),
    ("hosts-not-a-number", merged(KASI, {"hosts": "three"}), "hosts"),
    ("hosts-too-many-heat-resources", merged(KASI, merged(OPEN_OVERLAY, {"hosts": 400, "nodes": 400})), "hosts"),
    ("nodes-negative", merged(KASI, {"nodes": -1}), "nodes"),
    ("nodes-fewer-than-hosts", merged(KASI, {"hosts": 4, "nodes": 2}), "nodes"),
    ("overlay-too-small", merged(KASI, {"hosts": 12, "nodes": 1000}), "overlay.subnet"),
    ("overlay-not-a-cidr", merged(KASI, {"overlay": {"subnet": "10.0.9.0/33"}}), "overlay.subnet"),
    ("overlay-host-bits-set", merged(KASI, {"overlay": {"subnet": "10.0.9.1/24"}}), "overlay.subnet"),
    ("overlay-name-not-dns", merged(KASI, {"overlay": {"name": "Astro_Net"}}), "overlay.name"),
    ("network-cidr-too-small", merged(KASI, {"network": {"cidr": "10.20.0.0/29"}}), "network.cidr"),
    ("network-cidr-too-few-vms", merged(KASI, {"hosts": 12, "nodes": 96, "network": {"cidr": "10.20.0.0/28"}}),
     "network.cidr"),
    ("network-cidr-ipv6", merged(KASI, {"network": {"cidr": "fd00::/64"}}), "network.cidr"),
    ("dns-not-an-ip", merged(KASI, {"network": {"dns_nameservers": ["dns.google"]}}), "network.dns_nameservers"),
    ("timeout-below-heat-minimum", merged(KASI, {"timeouts": {"hosts_ready": 30}}), "timeouts.hosts_ready"),
    ("timeout-above-wait-condition-max", merged(KASI, {"timeouts": {"stack_create": 50000}}), "timeouts.stack_create"),
    ("timeout-negative", merged(KASI, {"timeouts": {"nodes_ready": -5}}), "timeouts.nodes_ready"),
    ("ssh-cidr-missing-on-real-cloud", without(KASI, "ssh.allowed_cidr"), "ssh.allowed_cidr"),
    ("ssh-cidr-host-bits", merged(KASI, {"ssh": {"allowed_cidr": "203.0.113.7/24"}}), "ssh.allowed_cidr"),
    ("ssh-cidr-garbage", merged(KASI, {"ssh": {"allowed_cidr": "my office"}}), "ssh.allowed_cidr"),
    ("image-ref-upper-case", merged(KASI, {"application": {"image": "Astro/SageCal:Latest"}}), "application.image"),
    ("image-ref-with-space", merged(KASI, {"application": {"image": "astrostack/sagecal 0.8"}}), "application.image"),
    ("slots-zero", merged(KASI, {"application": {"slots_per_node": 0}}), "application.slots_per_node"),
    ("volume-negative", merged(KASI, {"nfs": {"volume_size_gb": -1}}), "nfs.volume_size_gb"),
    ("mount-point-relative", merged(KASI, {"nfs": {"mount_point": "mnt/share"}}), "nfs.mount_point"),
    ("export-path-escapes", merged(KASI, {"nfs": {"export_path": "/export/../etc"}}), "nfs.export_path"),
    ("mount-point-root", merged(KASI, {"nfs": {"mount_point": "/"}}), "nfs.mount_point"),
    ("registry-with-scheme", merged(KASI, {"registry": {"url": "http://reg:5000"}}), "registry.url"),
    ("tag-with-space", merged(KASI, {"tags": ["has space"]}), "tags"),
    ("cloud-name-with-space", merged(KASI, {"cloud": "my cloud"}), "cloud"),
    ("section-not-a-mapping", merged(KASI, {"servers": "big"}), "servers"),
    ("role-without-flavor", merged(KASI, {"servers": {"manager": {"image": "debian-12"}}}), "servers.manager.flavor"),
    ("no-allowed-cidr", {"name": "l"}, "ssh.allowed_cidr"),
    ("fault-unknown-host", merged(KASI, {"faults": [{"host": "worker-7", "fault": "never-signal"}]}), "faults"),
    ("fault-wrong-kind", merged(KASI, {"faults": [{"host": "manager", "fault": "explode"}]}), "faults.0.fault"),
    ("local-section-is-gone", merged(KASI, {"local": {"faults": []}}), "local"),
]

# Specs that validate today but should not (src/ bugs): see the reasons.
KNOWN_BAD_BUT_ACCEPTED = [
    pytest.param(
        merged(KASI, {"nfs": {"mount_point": "//"}}), "nfs.mount_point",
        id="mount-point-double-slash",
    ),
    pytest.param(
        merged(KASI, {"registry": {"url": "registry.example.org:99999"}}), "registry.url",
        id="registry-port-out-of-range",
    ),
    pytest.param(
        merged(KASI, {"network": {"cidr": "10.0.9.0/24"}}), "overlay.subnet",
        id="overlay-overlaps-private-network",
    ),
]


@pytest.mark.parametrize(("data", "field"), [pytest.param(d, f, id=i) for i, d, f in BAD_SPECS])
def test_bad_spec_raises_one_line_naming_the_field(data, field):
    error = spec_error(yaml.safe_dump(data))

    assert blamed_field(error) == field
    assert error.exit_code == EXIT_INVALID_INPUT


@pytest.mark.parametrize(("data", "field"), KNOWN_BAD_BUT_ACCEPTED)
def test_specs_that_should_be_refused(data, field):
    error = spec_error(yaml.safe_dump(data))

    assert blamed_field(error) == field


def test_the_table_covers_enough_bad_specs():
    assert len(BAD_SPECS) >= 20
    assert len({case_id for case_id, _, _ in BAD_SPECS}) == len(BAD_SPECS)


def test_several_errors_are_one_line_with_a_count():
    error = spec_error(yaml.safe_dump(merged(KASI, {"hosts": -1, "nodes": -1, "mode": "x"})))

    assert blamed_field(error) in {"hosts", "nodes", "mode"}
    assert str(error).endswith("(and 2 more)")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("name: [", 1, id="unclosed-flow-sequence"),
        pytest.param("name: demo\n\thosts: 3\n", 2, id="tab-indent"),
        pytest.param("name: 'demo\nhosts: 3", 2, id="unterminated-quote"),
        pytest.param("name: demo\n  hosts: 3\nnodes: [1\n", 2, id="bad-indent"),
        pytest.param("name: !!python/object:os.system {}\n", 1, id="unsafe-tag"),
    ],
)
def test_invalid_yaml_is_one_line_with_the_line_number(text, line):
    message = str(spec_error(text))

    assert "\n" not in message
    source, rest = message.split(": ", 1)
    assert source == SOURCE
    assert rest.startswith(f"line {line} is not valid YAML")


@pytest.mark.parametrize("char", ["\x07", "\x1b", "\x00"])
def test_control_characters_give_one_line(char):
    message = str(spec_error(f"name: demo{char}\n"))

    assert "\n" not in message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty-file"),
        pytest.param("# only a comment\n", id="only-comments"),
        pytest.param("~\n", id="null"),
        pytest.param("- name: demo\n", id="a-list"),
        pytest.param("demo\n", id="a-string"),
        pytest.param("42\n", id="a-number"),
    ],
)
def test_a_spec_that_is_not_a_mapping_is_one_line_asking_for_name(text):
    message = str(spec_error(text))

    assert "\n" not in message
    source, rest = message.split(": ", 1)
    assert source == SOURCE
    assert "`name:`" in rest  # it tells the user what a spec starts with


def test_unreadable_spec_files_are_spec_errors(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    cases = {tmp_path / "missing.yaml": "no such spec file", tmp_path: "cannot read", binary: "cannot read"}

    for path, what in cases.items():
        with pytest.raises(SpecError) as caught:
            load_spec(path)
        message = str(caught.value)
        assert "\n" not in message
        source, rest = message.split(": ", 1)
        assert source == str(path)
        assert rest.startswith(what)
