"""Shared helpers of astrostack's local-cloud Heat plugins.

Loaded by the local Heat engine through ``plugin_dirs`` (as
``heat.engine.plugins.local_common``): import only heat, oslo, the stdlib and
the Docker SDK here, never ``astrostack``.

What lives here:

* labels put on every Docker object the plugins create, so a whole cluster
  can be found (and cleaned up) from the Docker side;
* ``loose_schema()``: a copy of a real resource's properties schema without
  the constraints that would call a real service;
* lookups of other stand-ins by their physical id (port -> IP and Docker
  network, keypair -> public key) and the IP ledger of a subnet, for the
  Server stand-in as much as for the Neutron ones.
"""

import ipaddress
import json
import threading
import time

import docker
from docker import errors as docker_errors
from heat.common import exception
from heat.db import api as db_api
from heat.engine import constraints, properties
from heat.objects import resource as resource_objects
from heat.objects import stack as stack_objects
from heat.objects import stack_tag as stack_tag_objects
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

LABEL_CLUSTER = "astrostack.cluster"
LABEL_STACK_ID = "astrostack.stack_id"
LABEL_RESOURCE = "astrostack.resource"
LABEL_NET_ID = "astrostack.net_id"
LABEL_SUBNET_ID = "astrostack.subnet_id"
# A stack tag "astrostack.cluster=NAME" names the cluster; else the root stack's name.
CLUSTER_TAG_PREFIX = LABEL_CLUSTER + "="

DOCKER_TIMEOUT = 60
DELETE_DEADLINE = 120.0

# Key prefix of the IP ledger kept in a subnet's resource data.
IP_KEY_PREFIX = "ip:"
_LEDGER_LOCK = threading.Lock()  # green under heat-all's eventlet monkey patching

_docker = None


class LocalCloudResourceError(exception.Error):
    """A stand-in could not do its work; the message becomes the status reason."""


def docker_client():
    """One Docker client per engine process, from the usual DOCKER_* environment."""
    global _docker
    if _docker is None:
        try:
            _docker = docker.from_env(timeout=DOCKER_TIMEOUT)
            _docker.ping()
        except docker_errors.DockerException as exc:
            _docker = None
            raise LocalCloudResourceError(
                "the Docker engine does not answer (%s); start dockerd and retry" % exc) from exc
    return _docker


# --- schemas ----------------------------------------------------------------


def loose_schema(real_schema):
    """The real properties schema without service-backed (custom) constraints.

    Names, types, defaults, required flags, update_allowed and the pure
    constraints (allowed values, ranges) stay, so templates written for a real
    cloud validate the same way; nothing is looked up in Neutron/Nova/Cinder.
    """
    return {name: _loose(schema) for name, schema in real_schema.items()}


def _loose(schema):
    nested = schema.schema
    if isinstance(nested, constraints.AnyIndexDict):
        nested = _loose(nested.value)
    elif nested is not None:
        nested = {key: _loose(value) for key, value in nested.items()}
    kept = [c for c in schema.constraints if not isinstance(c, constraints.CustomConstraint)]
    return properties.Schema(
        schema.type, schema.description, default=schema.default, schema=nested,
        required=schema.required, constraints=kept,
        update_allowed=schema.update_allowed,
        immutable=schema.immutable,
        support_status=schema.support_status)


# --- stack identity -----------------------------------------------------------


def root_stack(stack):
    """(id, name, tags) of the outermost stack that contains ``stack``."""
    root_id = stack.root_stack_id()
    if root_id == stack.id:
        return stack.id, stack.name, list(stack.tags or [])
    root = stack_objects.Stack.get_by_id(stack.context, root_id)
    tags = stack_tag_objects.StackTagList.get(stack.context, root_id) or []
    return root_id, root.name, [tag.tag for tag in tags]


def labels_for(resource):
    """Docker labels naming the cluster, the root stack and the resource."""
    root_id, root_name, tags = root_stack(resource.stack)
    cluster = next((tag[len(CLUSTER_TAG_PREFIX):] for tag in tags
                    if tag.startswith(CLUSTER_TAG_PREFIX)), root_name)
    return {
        LABEL_CLUSTER: cluster,
        LABEL_STACK_ID: root_id,
        LABEL_RESOURCE: "%s/%s" % (resource.stack.name, resource.name),
    }


def root_stack_name(resource):
    return root_stack(resource.stack)[1]


# --- other resources' data ------------------------------------------------------


def resource_row(context, physical_id):
    """The DB row of the resource whose physical id is ``physical_id``, or None."""
    if not physical_id:
        return None
    rows = resource_objects.Resource.get_all_by_physical_resource_id(context, physical_id)
    return rows[0] if rows else None


def resource_data(context, physical_id):
    """The resource data (a dict) of a resource found by physical id; {} if none."""
    row = resource_row(context, physical_id)
    if row is None:
        return {}
    return _row_data(context, row.id)


def _row_data(context, row_id):
    try:
        return db_api.resource_data_get_all(context, row_id)
    except exception.NotFound:
        return {}


def port_binding(context, port_id):
    """What a Server needs to plug into a port: ip_address, mac_address, docker_network."""
    data = resource_data(context, port_id)
    if "ip_address" not in data:
        raise LocalCloudResourceError("port %s is not a local-cloud port with an address"
                                      % port_id)
    return {key: data.get(key) for key in
            ("ip_address", "mac_address", "docker_network", "subnet_id", "network_id")}


def keypair_public_key(context, name):
    """The public key of a local KeyPair stand-in, or None."""
    return resource_data(context, name).get("public_key")


# --- Docker networks ------------------------------------------------------------


def docker_network_for_net(net_id):
    """The Docker network created for a Neutron net stand-in, or None."""
    found = docker_client().networks.list(filters={"label": "%s=%s" % (LABEL_NET_ID, net_id)})
    return found[0] if found else None


def overlapping_networks(cidr):
    """Names of existing Docker networks whose subnets overlap ``cidr``."""
    wanted = ipaddress.ip_network(cidr, strict=False)
    names = []
    for network in docker_client().networks.list():
        network.reload()
        for pool in (network.attrs.get("IPAM") or {}).get("Config") or []:
            subnet = pool.get("Subnet")
            if subnet and _overlaps(wanted, subnet):
                names.append(network.name)
    return names


def _overlaps(wanted, subnet):
    try:
        other = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return False
    return other.version == wanted.version and wanted.overlaps(other)


def mac_for_ip(ip_address):
    """Docker's own MAC for an IPv4 address (02:42 + the 4 bytes)."""
    octets = ipaddress.ip_address(ip_address).packed[-4:]
    return "02:42:" + ":".join("%02x" % octet for octet in octets)


# --- IP ledger of a subnet ------------------------------------------------------


def allocate_ip(context, subnet_id, owner_id, wanted=None):
    """Reserve ``wanted`` (or the lowest free address) in a subnet for ``owner_id``.

    Deterministic: candidates come from the subnet's allocation pools, else
    from the lower half of its CIDR (Docker's own IPAM hands out the upper
    half), skipping the network address, .1, the gateway and broadcast.
    """
    row = resource_row(context, subnet_id)
    if row is None:
        raise LocalCloudResourceError("subnet %s does not exist on the local cloud" % subnet_id)
    with _LEDGER_LOCK:
        data = _row_data(context, row.id)
        taken = {key[len(IP_KEY_PREFIX):]: value for key, value in data.items()
                 if key.startswith(IP_KEY_PREFIX)}
        address = _pick_address(data, taken, owner_id, wanted)
        db_api.resource_data_set(context, row.id, IP_KEY_PREFIX + address, owner_id)
    return address


def release_ip(context, subnet_id, address):
    """Return an address to its subnet's ledger (nothing to do if the subnet is gone)."""
    row = resource_row(context, subnet_id)
    if row is None:
        return
    with _LEDGER_LOCK:
        try:
            db_api.resource_data_delete(context, row.id, IP_KEY_PREFIX + address)
        except exception.NotFound:
            LOG.debug("address %s was not in the ledger of subnet %s", address, subnet_id)


def _pick_address(subnet_data, taken, owner_id, wanted):
    network = ipaddress.ip_network(subnet_data["cidr"], strict=False)
    reserved = {str(network.network_address), str(network.network_address + 1),
                subnet_data.get("gateway_ip") or "", str(network.broadcast_address)}
    if wanted:
        if ipaddress.ip_address(wanted) not in network:
            raise LocalCloudResourceError("address %s is outside subnet %s" % (wanted, network))
        holder = taken.get(wanted)
        if (holder and holder != owner_id) or wanted in reserved:
            raise LocalCloudResourceError("address %s in %s is already in use" % (wanted, network))
        return wanted
    for candidate in candidate_addresses(network, json.loads(
            subnet_data.get("allocation_pools") or "[]")):
        if candidate not in taken and candidate not in reserved:
            return candidate
    raise LocalCloudResourceError("no free address left in subnet %s" % network)


def candidate_addresses(network, pools):
    """Addresses ports may get, in order: allocation pools, else the CIDR's lower half."""
    if pools:
        for pool in pools:
            first = int(ipaddress.ip_address(pool["start"]))
            last = int(ipaddress.ip_address(pool["end"]))
            for value in range(first, last + 1):
                yield str(ipaddress.ip_address(value))
        return
    count = network.num_addresses - 2
    if docker_ip_range(network):
        count //= 2
    first = int(network.network_address) + 1
    for value in range(first, first + count):
        yield str(ipaddress.ip_address(value))


def docker_ip_range(network):
    """The upper half of a CIDR, where Docker's IPAM may place unplanned containers."""
    if network.prefixlen > 28 or network.version != 4:
        return None
    return str(list(network.subnets(prefixlen_diff=1))[1])


# --- polling deadlines ------------------------------------------------------------


def deadline_from_now(seconds=DELETE_DEADLINE):
    return time.monotonic() + seconds


def past(deadline):
    return time.monotonic() > deadline
