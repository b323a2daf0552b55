"""Values that validated once but would break a deployment, and strict types."""

from __future__ import annotations

import pytest
import yaml

from astrostack.errors import SpecError
from astrostack.spec import MAX_USER_TAGS, parse_spec, spec_from_dict

BASE = {"name": "demo", "cloud": "kasi", "ssh": {"allowed_cidr": "203.0.113.7/32"}}


def spec_with(**changes):
    data = {**BASE}
    for dotted, value in changes.items():
        section, _, field = dotted.partition("__")
        if field:
            data[section] = {**data.get(section, {}), field: value}
        else:
            data[section] = value
    return data


def refused(**changes) -> str:
    with pytest.raises(SpecError) as caught:
        spec_from_dict(spec_with(**changes), source="s.yaml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("s.yaml: ")
    return message.removeprefix("s.yaml: ")


# Mount points ---------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["/etc", "/usr", "/var", "/boot", "/proc", "/sys", "/dev", "/run", "/bin",
                                    "/sbin", "/lib", "/home", "/root", "/tmp", "/etc/share", "/usr/share/data",
                                    "/var/lib/docker", "/proc/x", "/var/log/share"])
@pytest.mark.parametrize("field", ["mount_point", "export_path"])
def test_a_share_over_a_system_folder_is_refused(field, folder):
    message = refused(**{f"nfs__{field}": folder})
    assert message.startswith(f"nfs.{field}: {folder} is a system folder")


@pytest.mark.parametrize("folder", ["/", "//"])
def test_the_root_folder_is_refused(folder):
    assert refused(nfs__mount_point=folder).startswith("nfs.mount_point:")


@pytest.mark.parametrize("folder", ["/mnt/share", "/data", "/scratch/astro", "/var/share", "/srv/share",
                                    "/home/debian/share"])
def test_ordinary_share_folders_are_fine(folder):
    assert spec_from_dict(spec_with(nfs__mount_point=folder)).nfs.mount_point == folder


def test_the_mount_point_may_not_be_the_export_path():
    message = refused(nfs__mount_point="/export/share")
    assert message.startswith("nfs.mount_point: /export/share is also nfs.export_path")


# Addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(("cidr", "kind"), [("127.0.0.0/24", "loopback"), ("169.254.0.0/24", "link-local"),
                                            ("224.0.0.0/24", "multicast"), ("240.0.0.0/24", "reserved"),
                                            ("0.0.0.0/24", "unspecified")])
@pytest.mark.parametrize("field", ["network__cidr", "overlay__subnet"])
def test_special_ranges_are_no_networks(field, cidr, kind):
    message = refused(**{field: cidr})
    assert message.startswith(f"{field.replace('__', '.')}: {cidr} cannot be") and kind in message


@pytest.mark.parametrize("cidr", ["127.0.0.1/32", "169.254.1.1/32", "224.0.0.1/32"])
def test_ssh_from_a_special_range_is_refused(cidr):
    assert refused(ssh__allowed_cidr=cidr).startswith(f"ssh.allowed_cidr: {cidr} cannot be")


def test_ssh_from_anywhere_is_accepted_but_warned_loudly():
    spec = spec_from_dict(spec_with(ssh__allowed_cidr="0.0.0.0/0"))
    (warning,) = spec.warnings()
    assert warning.startswith("ssh.allowed_cidr is 0.0.0.0/0: any address on the Internet may try SSH")


def test_an_ordinary_spec_has_no_warning():
    assert spec_from_dict(spec_with()).warnings() == []


@pytest.mark.parametrize("server", ["127.0.0.53", "224.0.0.251", "0.0.0.0"])
def test_dns_servers_the_vms_cannot_use_are_refused(server):
    assert refused(network__dns_nameservers=[server]).startswith("network.dns_nameservers:")


@pytest.mark.parametrize("cidr", ["\u0661\u0660.0.0.0/24", "10.0.0.0\n/24"])
def test_non_ascii_or_multiline_addresses_are_refused(cidr):
    assert "is not an IPv4 CIDR" in refused(network__cidr=cidr)


# Names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("servers__image", "debian\n12"), ("servers__image", "debian;reboot"), ("servers__image", "`id`"),
    ("servers__image", " debian"), ("servers__image", "deb\u202eian"),
    ("network__external", "public\nnet"), ("network__external", "a$b"),
    ("servers__user", "debian;x"), ("servers__user", "Debian"), ("servers__user", "a\nb"),
    ("ssh__keypair", "my key;rm"), ("ssh__keypair", "key\n"),
])
def test_names_with_newlines_or_shell_characters_are_refused(field, value):
    message = refused(**{field: value})
    assert message.startswith(f"{field.replace('__', '.')}: ")
    assert "\n" not in message and "\u202e" not in message


def test_flavor_names_are_checked_too():
    assert refused(servers={"worker": {"flavor": "m1.large;x"}}).startswith("servers.worker.flavor:")


def test_ordinary_names_are_fine():
    spec = spec_from_dict(spec_with(servers={"image": "Ubuntu 22.04 (Jammy)", "user": "ubuntu",
                                             "worker": {"flavor": "m1.x-large_2"}},
                                    network__external="ext-net", ssh__keypair="my key"))
    assert spec.servers.image == "Ubuntu 22.04 (Jammy)"


# Tags ----------------------------------------------------------------------------------


def test_more_tags_than_nova_allows_are_refused():
    assert spec_from_dict(spec_with(tags=[f"t{i}" for i in range(MAX_USER_TAGS)]))
    message = refused(tags=[f"t{i}" for i in range(MAX_USER_TAGS + 1)])
    assert message.startswith(f"tags: {MAX_USER_TAGS + 1} tags: Nova allows 50 per server")


@pytest.mark.parametrize("tag", ["astrostack", "astrostack-cluster=other"])
def test_astrostacks_own_marks_are_no_user_tags(tag):
    assert "astrostack's own mark" in refused(tags=[tag])


def test_a_tag_listed_twice_is_refused():
    assert "listed twice" in refused(tags=["a", "a"])


# Strict types --------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("hosts", True), ("nodes", False), ("hosts", "3"), ("hosts", 3.0),
    ("timeouts__delete", "600"), ("timeouts__delete", True), ("nfs__volume_size_gb", "10"),
    ("application__slots_per_node", True),
    ("servers__install_packages", "yes"), ("servers__install_packages", 1), ("registry__insecure", "true"),
    ("overlay__encrypted", "yes"), ("overlay__encrypted", 1),
])
def test_no_numbers_as_text_no_booleans_as_numbers(field, value):
    message = refused(**{field: value})
    assert message.startswith(f"{field.replace('__', '.')}: ")


def test_a_boolean_where_a_number_belongs_says_so():
    assert refused(hosts=True) == "hosts: Input should be a valid integer, got true (a boolean)"


def test_text_where_a_number_belongs_says_so():
    assert refused(hosts="3").startswith("hosts: Input should be a valid integer, got '3' (text")


def test_a_spec_read_back_from_json_still_validates():
    """The state store keeps specs as JSON: enums come back as text, and must still be accepted."""
    spec = spec_from_dict(spec_with(mode="mpi"))
    assert spec_from_dict(yaml.safe_load(spec.model_dump_json())).mode.value == "mpi"


def test_yaml_octal_is_refused_not_read_as_493():
    with pytest.raises(SpecError, match="'0755' is a number YAML 1.1 and 1.2 read differently"):
        parse_spec("name: demo\ncloud: kasi\nssh: {allowed_cidr: 203.0.113.7/32}\nnfs: {volume_size_gb: 0755}\n")


def test_yes_and_no_are_text_so_a_boolean_field_refuses_them():
    with pytest.raises(SpecError, match="servers.install_packages: Input should be a valid boolean, got 'no'"):
        parse_spec("name: demo\ncloud: kasi\nssh: {allowed_cidr: 203.0.113.7/32}\nservers: {install_packages: no}\n")


# Quoting --------------------------------------------------------------------------------


def test_an_unknown_key_with_terminal_escapes_is_quoted():
    data = {**BASE, "\x1b[2Jevil": 1}
    with pytest.raises(SpecError) as caught:
        spec_from_dict(data, source="s.yaml")
    assert "\x1b" not in str(caught.value) and "'\\x1b[2Jevil': unknown field" in str(caught.value)


def test_a_huge_value_is_quoted_with_a_bounded_length():
    with pytest.raises(SpecError) as caught:
        spec_from_dict({**BASE, "name": "x" * 100_000}, source="s.yaml")
    assert len(str(caught.value)) < 400 and "(100000 characters)" in str(caught.value)
