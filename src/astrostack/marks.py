"""A cluster's mark on its cloud resources, spelled once.

Neutron resources carry the tag ``astrostack-cluster=NAME`` (and the tag
``astrostack``); servers and volumes the metadata key ``astrostack_cluster``;
what has neither tags nor metadata in Heat (security groups, floating IPs)
carries the mark at the start of its description; keypairs, which have none
of these, are named ``astrostack-NAME``. The sweeper matches these marks and
nothing else. heat_templates/cluster.yaml spells the same strings (HOT cannot
import them); a unit test holds the two together.
"""

from __future__ import annotations

from collections.abc import Iterable

TAG_PREFIX = "astrostack-cluster="
GENERIC_TAG = "astrostack"
METADATA_KEY = "astrostack_cluster"
KEYPAIR_PREFIX = "astrostack-"


def cluster_tag(cluster: str) -> str:
    return TAG_PREFIX + cluster


def keypair_name(cluster: str) -> str:
    return KEYPAIR_PREFIX + cluster


def owner_from_tags(tags: Iterable[str]) -> str:
    """The cluster a tagged resource belongs to, or ''."""
    return next((tag[len(TAG_PREFIX):] for tag in tags if tag.startswith(TAG_PREFIX)), "")


def owner_from_description(description: str) -> str:
    """The cluster named by a description that starts with the mark (``mark`` or ``mark: text``), or ''."""
    if not description.startswith(TAG_PREFIX):
        return ""
    return description[len(TAG_PREFIX):].split(":", 1)[0].strip()


def owner_from_keypair(name: str) -> str:
    return name[len(KEYPAIR_PREFIX):] if name.startswith(KEYPAIR_PREFIX) else ""
