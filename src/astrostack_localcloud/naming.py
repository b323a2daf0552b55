"""One name for one thing on the local cloud's hypervisor and data plane.

Every part of the local cloud (the Nova virt driver that plugs a server's
interfaces, the network agent that filters and routes them, the control
plane that creates the external bridge) derives the Linux names of the
objects it shares from the OpenStack ids here, the way Neutron's own agents
do (``tap`` + the first 11 characters of the port id). Interface names are
at most 15 characters (IFNAMSIZ - 1).
"""

from __future__ import annotations

import os

ID_CHARS = 11

# Labels on the Docker containers and volumes that are Nova servers.
LABEL_INSTANCE = "astrostack.local.instance"      # the Nova instance uuid
LABEL_INSTANCE_NAME = "astrostack.local.instance-name"  # Nova's instance name (instance-0000000a)
LABEL_HOSTNAME = "astrostack.local.hostname"      # the server's hostname
LABEL_HYPERVISOR = "astrostack.local.hypervisor"  # the folder of the hypervisor that runs it (LOCAL)

# The external network's bridge on this machine (its gateway address lives on it).
EXTERNAL_BRIDGE = os.environ.get("ASTROSTACK_LOCAL_EXTERNAL_BRIDGE", "astro-ex")
# The metadata proxy's port inside every router namespace (Neutron uses 9697).
METADATA_PROXY_PORT = 9697
METADATA_ADDRESS = "169.254.169.254"


def network_bridge(network_id: str) -> str:
    """The Linux bridge that carries one Neutron network (brq + 11, as linuxbridge does)."""
    return "brq" + network_id[:ID_CHARS]


def tap_device(port_id: str) -> str:
    """Host end of a server's interface (a veth), in the network's bridge."""
    return "tap" + port_id[:ID_CHARS]


def router_namespace(router_id: str) -> str:
    return "qrouter-" + router_id


def router_internal_device(port_id: str) -> str:
    """A router interface's end inside the router namespace."""
    return "qr-" + port_id[:ID_CHARS]


def router_gateway_device(port_id: str) -> str:
    """A router's gateway end inside its namespace, on the external bridge."""
    return "qg-" + port_id[:ID_CHARS]


def dhcp_namespace(network_id: str) -> str:
    return "qdhcp-" + network_id


def dhcp_device(port_id: str) -> str:
    """The DHCP port's end inside the qdhcp namespace."""
    return "ns-" + port_id[:ID_CHARS]


def peer_device(namespaced_device: str) -> str:
    """The bridge end of a veth whose other end is in a namespace (qr-/qg-/ns-)."""
    return "t" + namespaced_device


def security_group_ipset(security_group_id: str) -> str:
    """ipset of the IPv4 addresses of one security group's members (<= 31 chars)."""
    return "astro-sg-" + security_group_id[:20]


def security_group_ipset_v6(security_group_id: str) -> str:
    """ipset of the IPv6 addresses of one security group's members (<= 31 chars)."""
    return "astro-s6-" + security_group_id[:20]


def instance_container(instance_uuid: str) -> str:
    """The Docker container that is a Nova server."""
    return "nova-" + instance_uuid


def instance_docker_volume(instance_uuid: str) -> str:
    """The Docker volume on a server's /var/lib/docker (its inner dockerd's disk)."""
    return instance_container(instance_uuid) + "-var-lib-docker"


def staged_guest_device(port_id: str) -> str:
    """A VIF's guest end while it waits in this namespace to be moved into its server."""
    return "vm" + port_id[:ID_CHARS]


def glance_image_reference(image_id: str) -> str:
    """The Docker tag under which a Glance image of container_format docker is cached."""
    return "astrostack-local/glance:" + image_id
