"""A cluster's mark is spelled once (astrostack.marks) and the templates agree."""

from __future__ import annotations

from pathlib import Path

import yaml

from astrostack import marks
from astrostack.render import cluster_tags
from astrostack.spec import spec_from_dict

TEMPLATE = Path(__file__).resolve().parents[2] / "heat_templates" / "cluster.yaml"


def _resources(rtype: str) -> dict:
    template = yaml.safe_load(TEMPLATE.read_text())
    return {name: r for name, r in template["resources"].items() if r["type"] == rtype}


def _joined(value: dict, cluster: str) -> str:
    """A list_join of literals and {get_param: cluster_name}, as Heat evaluates it."""
    separator, parts = value["list_join"]
    return separator.join(cluster if isinstance(p, dict) and p.get("get_param") == "cluster_name" else p
                          for p in parts)


def test_every_security_group_description_starts_with_the_cluster_mark():
    groups = _resources("OS::Neutron::SecurityGroup")

    assert len(groups) == 3
    for group in groups.values():
        description = _joined(group["properties"]["description"], "demo")
        assert marks.owner_from_description(description) == "demo", description


def test_the_floating_ip_and_keypair_carry_the_mark():
    (fip,) = _resources("OS::Neutron::FloatingIP").values()
    (keypair,) = _resources("OS::Nova::KeyPair").values()

    assert marks.owner_from_description(_joined(fip["properties"]["value_specs"]["description"], "demo")) == "demo"
    assert marks.owner_from_keypair(_joined(keypair["properties"]["name"], "demo")) == "demo"


def test_servers_and_volumes_carry_the_metadata_mark():
    template = yaml.safe_load(TEMPLATE.read_text())
    worker = yaml.safe_load((TEMPLATE.parent / "lib" / "worker.yaml").read_text())
    marked = [template["resources"][name] for name in ("manager", "nfs_server", "nfs_volume")]
    marked.append(worker["resources"]["server"])

    for resource in marked:
        assert marks.METADATA_KEY in resource["properties"]["metadata"]


def test_tags_start_with_the_cluster_mark_and_name_no_other_cluster():
    spec = spec_from_dict({"name": "demo", "ssh": {"allowed_cidr": "172.24.4.1/32"}, "tags": ["project=x"]})

    tags = cluster_tags(spec)
    assert tags[:2] == [marks.cluster_tag("demo"), marks.GENERIC_TAG]
    assert marks.owner_from_tags(tags) == "demo"
    assert marks.owner_from_tags(["astrostack", "project=x"]) == ""


def test_a_description_without_the_mark_at_its_start_belongs_to_nobody():
    assert marks.owner_from_description("lab-nfs: astrostack-cluster=demo") == ""
    assert marks.owner_from_description("") == ""
    assert marks.owner_from_keypair("lab-key") == ""
