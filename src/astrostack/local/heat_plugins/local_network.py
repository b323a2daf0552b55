"""Local-cloud stand-ins for Neutron, Cinder and Nova keypairs (Heat resource plugins).

Loaded by the local Heat engine through ``plugin_dirs``; they run inside the
Heat venv, so they import only heat, oslo, the stdlib and the Docker SDK.
``heat_templates/local-environment.yaml`` maps the real types to these, so an
unchanged real-cloud template deploys on the local cloud.

Every stand-in declares the real resource's properties (same names, types
and defaults, without the constraints that would query a real service) and
answers the real attributes from a ``show`` dict kept in its resource data.
What is real here: a Subnet is a Docker bridge network with the subnet's
CIDR, a Port is an address reserved in that network, a Volume is a Docker
volume. Routers, security groups and floating IPs are bookkeeping only: on
the local cloud every private address is reachable from the host.
"""

import ipaddress
import json
import uuid

from docker import errors as docker_errors
from docker import types as docker_types
from heat.common import exception
from heat.db import api as db_api
from heat.engine import attributes, resource, translation
from heat.engine.plugins import local_common as common
from heat.engine.resources.openstack.cinder import volume as real_volume
from heat.engine.resources.openstack.neutron import floatingip as real_floatingip
from heat.engine.resources.openstack.neutron import net as real_net
from heat.engine.resources.openstack.neutron import port as real_port
from heat.engine.resources.openstack.neutron import router as real_router
from heat.engine.resources.openstack.neutron import security_group as real_sg
from heat.engine.resources.openstack.neutron import security_group_rule as real_sg_rule
from heat.engine.resources.openstack.neutron import subnet as real_subnet
from heat.engine.resources.openstack.nova import keypair as real_keypair
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

TYPE_PREFIX = "AstrostackLocal::"
SHOW_KEY = "show"
MTU = 1500


class LocalResource(resource.Resource):
    """Base of the stand-ins: a uuid id, a stored ``show`` dict, no client calls.

    Subclasses set ``real`` (the Heat class they stand in for), may list
    ``renamed`` (deprecated property names Heat must copy onto the current
    ones) and override ``describe()``.
    """

    real = None
    renamed = ()
    default_client_name = None
    entity = None

    def translation_rules(self, props):
        return [translation.TranslationRule(props, translation.TranslationRule.REPLACE,
                                            list(path), **how)
                for path, how in self.renamed]

    def handle_create(self):
        self.resource_id_set(str(uuid.uuid4()))
        self.save_show(self.describe(dict(self.properties)))

    def handle_update(self, json_snippet, tmpl_diff, prop_diff):
        if prop_diff:
            props = dict(self.properties)
            props.update(prop_diff)
            self.save_show(self.describe(props))

    def handle_delete(self):
        return None

    def describe(self, props):
        """The resource as the real API would show it."""
        show = {key: value for key, value in props.items() if value is not None}
        show.update(id=self.resource_id, name=props.get("name") or self.physical_resource_name(),
                    tenant_id=self.context.project_id, project_id=self.context.project_id)
        return show

    def save_show(self, show):
        self.data_set(SHOW_KEY, json.dumps(show))

    def show(self):
        return json.loads(self.data().get(SHOW_KEY) or "{}")

    def _show_resource(self):
        return self.show()

    def _resolve_attribute(self, name):
        return self.show().get(name)


def _copy_schemas(real):
    return common.loose_schema(real.properties_schema), dict(real.attributes_schema)


# --- networks ---------------------------------------------------------------------


class LocalNet(LocalResource):
    """OS::Neutron::Net: bookkeeping; its subnet creates the Docker network."""

    real = real_net.Net
    properties_schema, attributes_schema = _copy_schemas(real)

    def describe(self, props):
        show = super().describe(props)
        show.update(status="ACTIVE", mtu=MTU, admin_state_up=props.get("admin_state_up", True),
                    port_security_enabled=props.get("port_security_enabled", True),
                    qos_policy_id=props.get("qos_policy"), segments=[], l2_adjacency=True)
        return show

    def _resolve_attribute(self, name):
        if name == "subnets":
            network = common.docker_network_for_net(self.resource_id)
            return [network.attrs["Labels"][common.LABEL_SUBNET_ID]] if network else []
        return super()._resolve_attribute(name)


class LocalSubnet(LocalResource):
    """OS::Neutron::Subnet: a Docker bridge network with the subnet's CIDR and gateway.

    One subnet per net (a Docker network cannot gain address pools later).
    """

    real = real_subnet.Subnet
    renamed = (([real_subnet.Subnet.NETWORK], {"value_path": [real_subnet.Subnet.NETWORK_ID]}),)
    properties_schema, attributes_schema = _copy_schemas(real)

    def handle_create(self):
        props = dict(self.properties)
        cidr = props.get("cidr")
        if not cidr:
            raise common.LocalCloudResourceError(
                "subnet %s needs an explicit cidr on the local cloud (subnet pools are not "
                "emulated)" % self.name)
        network = ipaddress.ip_network(cidr, strict=False)
        gateway = props.get("gateway_ip") or str(network.network_address + 1)
        self.resource_id_set(str(uuid.uuid4()))
        name = "astrostack-%s-%s" % (common.root_stack_name(self), props["network"][:8])
        self.data_set("docker_network", name)  # before creating it, so delete cleans up
        self._create_docker_network(name, props["network"], network, gateway)
        self.data_set("cidr", str(network))
        self.data_set("gateway_ip", gateway)
        self.data_set("allocation_pools", json.dumps(props.get("allocation_pools") or []))
        self.data_set("network_id", props["network"])
        show = self.describe(props)
        show.update(cidr=str(network), network_id=props["network"],
                    gateway_ip=None if props.get("gateway_ip") == "" else gateway,
                    allocation_pools=props.get("allocation_pools") or [
                        {"start": str(network.network_address + 2),
                         "end": str(network.broadcast_address - 1)}],
                    ip_version=network.version, enable_dhcp=props.get("enable_dhcp", True))
        self.save_show(show)

    def _create_docker_network(self, name, net_id, network, gateway):
        """Create the bridge network, failing clearly on a clash with an existing one."""
        existing = common.docker_network_for_net(net_id)
        if existing is not None:
            raise common.LocalCloudResourceError(
                "network %s already has subnet %s on the local cloud (Docker network %s); "
                "only one subnet per network is emulated"
                % (net_id, existing.attrs["Labels"].get(common.LABEL_SUBNET_ID), existing.name))
        clashes = common.overlapping_networks(str(network))
        if clashes:
            raise common.LocalCloudResourceError(
                "subnet cidr %s overlaps the existing Docker network(s) %s; choose another cidr "
                "or remove them (docker network rm)" % (network, ", ".join(sorted(clashes))))
        labels = dict(common.labels_for(self))
        labels.update({common.LABEL_NET_ID: net_id, common.LABEL_SUBNET_ID: self.resource_id})
        pool = docker_types.IPAMPool(subnet=str(network), gateway=gateway,
                                     iprange=common.docker_ip_range(network))
        try:
            common.docker_client().networks.create(
                name, driver="bridge", labels=labels, check_duplicate=True,
                ipam=docker_types.IPAMConfig(pool_configs=[pool]))
        except docker_errors.APIError as exc:
            raise common.LocalCloudResourceError(
                "could not create Docker network %s for cidr %s: %s"
                % (name, network, exc.explanation or exc)) from exc
        LOG.info("subnet %s: Docker network %s (%s, gateway %s)", self.name, name, network,
                 gateway)

    def handle_delete(self):
        return common.deadline_from_now()

    def check_delete_complete(self, deadline):
        """Remove the Docker network; wait (to a deadline) while containers are still on it."""
        if self.resource_id is None or deadline is None:
            return True
        name = self.data().get("docker_network")
        if not name:
            return True
        client = common.docker_client()
        try:
            network = client.networks.get(name)
            if network.attrs.get("Labels", {}).get(common.LABEL_SUBNET_ID) != self.resource_id:
                return True  # same name, another subnet's network: not ours to remove
            network.remove()
        except docker_errors.NotFound:
            return True
        except docker_errors.APIError as exc:
            if not common.past(deadline):
                return False
            raise common.LocalCloudResourceError(
                "Docker network %s is still in use: %s" % (name, exc.explanation or exc)) from exc
        return True


class LocalRouter(LocalResource):
    """OS::Neutron::Router: bookkeeping (the host routes to every local network)."""

    real = real_router.Router
    properties_schema, attributes_schema = _copy_schemas(real)

    def describe(self, props):
        show = super().describe(props)
        gateway = props.get("external_gateway_info") or None
        if gateway:
            gateway = {"network_id": gateway.get("network"),
                       "enable_snat": gateway.get("enable_snat", True),
                       "external_fixed_ips": gateway.get("external_fixed_ips") or []}
        show.update(status="ACTIVE", admin_state_up=props.get("admin_state_up", True),
                    external_gateway_info=gateway)
        return show


class LocalRouterInterface(LocalResource):
    """OS::Neutron::RouterInterface: bookkeeping."""

    real = real_router.RouterInterface
    renamed = (
        ([real_router.RouterInterface.ROUTER], {"value_path": [real_router.RouterInterface.ROUTER_ID]}),
        ([real_router.RouterInterface.SUBNET], {"value_path": [real_router.RouterInterface.SUBNET_ID]}),
        ([real_router.RouterInterface.PORT], {"value_path": [real_router.RouterInterface.PORT_ID]}),
    )
    properties_schema, attributes_schema = _copy_schemas(real)

    def handle_create(self):
        kind, target = ("port_id", self.properties["port"]) if self.properties["port"] \
            else ("subnet_id", self.properties["subnet"])
        self.resource_id_set("%s:%s=%s" % (self.properties["router"], kind, target))
        self.save_show(self.describe(dict(self.properties)))


class LocalSecurityGroup(LocalResource):
    """OS::Neutron::SecurityGroup: rules are stored, not enforced, on the local cloud."""

    real = real_sg.SecurityGroup
    properties_schema, attributes_schema = _copy_schemas(real)

    def describe(self, props):
        show = super().describe(props)
        show["security_group_rules"] = props.get("rules") or []
        return show

    def handle_create(self):
        super().handle_create()
        LOG.warning("security group %s: %d rule(s) recorded but NOT enforced on the local "
                    "cloud (no firewalling between local VMs)", self.name,
                    len(self.properties["rules"] or []))


class LocalSecurityGroupRule(LocalResource):
    """OS::Neutron::SecurityGroupRule: stored, not enforced."""

    real = real_sg_rule.SecurityGroupRule
    properties_schema, attributes_schema = _copy_schemas(real)


# --- ports and floating IPs -------------------------------------------------------


class LocalPort(LocalResource):
    """OS::Neutron::Port: a deterministic free address of the subnet, reserved for a server.

    The Server stand-in reads ``local_common.port_binding()`` to attach its
    container to the Docker network with this address and MAC.
    """

    real = real_port.Port
    renamed = (
        ([real_port.Port.NETWORK], {"value_path": [real_port.Port.NETWORK_ID]}),
        ([real_port.Port.FIXED_IPS, real_port.Port.FIXED_IP_SUBNET],
         {"value_name": real_port.Port.FIXED_IP_SUBNET_ID}),
    )
    properties_schema, attributes_schema = _copy_schemas(real)

    def add_dependencies(self, deps):
        """Like the real Port: create every subnet of this port's network first."""
        super().add_dependencies(deps)
        for res in self.stack.values():
            if not res.has_interface("OS::Neutron::Subnet"):
                continue
            try:
                same_network = res.properties.get("network") == self.properties["network"]
            except (ValueError, TypeError):
                continue
            if same_network:
                deps += (self, res)

    def handle_create(self):
        props = dict(self.properties)
        self.resource_id_set(str(uuid.uuid4()))
        wanted = [] if props.get("no_fixed_ips") else (props.get("fixed_ips") or [{}])
        fixed_ips = [self._allocate(props["network"], entry) for entry in wanted]
        first = fixed_ips[0] if fixed_ips else {}
        subnet_data = common.resource_data(self.context, first.get("subnet_id"))
        mac = props.get("mac_address") or (
            common.mac_for_ip(first["ip_address"]) if first else None)
        for key, value in (("ip_address", first.get("ip_address")),
                           ("subnet_id", first.get("subnet_id")),
                           ("network_id", props["network"]), ("mac_address", mac),
                           ("docker_network", subnet_data.get("docker_network"))):
            if value:
                self.data_set(key, value)
        show = self.describe(props)
        show.update(fixed_ips=fixed_ips, mac_address=mac, network_id=props["network"],
                    status="ACTIVE", admin_state_up=props.get("admin_state_up", True),
                    subnets=[{"id": ip["subnet_id"]} for ip in fixed_ips],
                    network={"id": props["network"]},
                    security_groups=props.get("security_groups") or [],
                    dns_assignment=[], device_id=props.get("device_id") or "",
                    device_owner=props.get("device_owner") or "")
        self.save_show(show)

    def _allocate(self, network_id, entry):
        """Reserve one fixed IP and note it at once, so a failed create still cleans up."""
        subnet_id = entry.get("subnet") or self._only_subnet_of(network_id)
        address = common.allocate_ip(self.context, subnet_id, self.resource_id,
                                     entry.get("ip_address"))
        allocated = json.loads(self.data().get("fixed_ips") or "[]")
        allocated.append({"ip_address": address, "subnet_id": subnet_id})
        self.data_set("fixed_ips", json.dumps(allocated))
        return {"ip_address": address, "subnet_id": subnet_id}

    def _only_subnet_of(self, network_id):
        network = common.docker_network_for_net(network_id)
        if network is None:
            raise common.LocalCloudResourceError(
                "network %s has no subnet on the local cloud: a port needs one" % network_id)
        return network.attrs["Labels"][common.LABEL_SUBNET_ID]

    def handle_update(self, json_snippet, tmpl_diff, prop_diff):
        if set(prop_diff) & {"network", "fixed_ips", "no_fixed_ips"}:
            raise resource.UpdateReplace(self.name)
        if prop_diff:
            show = self.show()
            show.update({k: v for k, v in prop_diff.items() if k not in ("mac_address",)})
            self.save_show(show)

    def handle_delete(self):
        if self.resource_id is None:
            return None
        for ip in json.loads(self.data().get("fixed_ips") or "[]"):
            common.release_ip(self.context, ip["subnet_id"], ip["ip_address"])
        return None


class LocalFloatingIP(LocalResource):
    """OS::Neutron::FloatingIP: its address is the port's fixed IP (reachable from the host)."""

    real = real_floatingip.FloatingIP
    renamed = (([real_floatingip.FloatingIP.FLOATING_NETWORK],
                {"value_path": [real_floatingip.FloatingIP.FLOATING_NETWORK_ID]}),)
    properties_schema, attributes_schema = _copy_schemas(real)

    def describe(self, props):
        show = super().describe(props)
        show.update(floating_network_id=props.get("floating_network"), router_id=None,
                    status="ACTIVE")
        return show

    def associated_port(self):
        return self.data().get("associated_port") or self.properties["port_id"]

    def _resolve_attribute(self, name):
        port_id = self.associated_port()
        if name == "port_id":
            return port_id
        if name in ("floating_ip_address", "fixed_ip_address"):
            if not port_id:
                return self.properties["floating_ip_address"]
            address = common.resource_data(self.context, port_id).get("ip_address")
            return self.properties["fixed_ip_address"] or address
        return super()._resolve_attribute(name)

    def _show_resource(self):
        show = self.show()
        for name in ("port_id", "floating_ip_address", "fixed_ip_address"):
            show[name] = self._resolve_attribute(name)
        return show


class LocalFloatingIPAssociation(LocalResource):
    """OS::Neutron::FloatingIPAssociation: tells the floating IP which port it follows."""

    real = real_floatingip.FloatingIPAssociation
    properties_schema, attributes_schema = _copy_schemas(real)

    def handle_create(self):
        super().handle_create()
        self._set_fip_port(self.properties["floatingip_id"], self.properties["port_id"])

    def handle_update(self, json_snippet, tmpl_diff, prop_diff):
        super().handle_update(json_snippet, tmpl_diff, prop_diff)
        if prop_diff:
            self._set_fip_port(prop_diff.get("floatingip_id", self.properties["floatingip_id"]),
                               prop_diff.get("port_id", self.properties["port_id"]))

    def handle_delete(self):
        row = common.resource_row(self.context, self.properties["floatingip_id"])
        if row is not None:
            try:
                db_api.resource_data_delete(self.context, row.id, "associated_port")
            except exception.NotFound:
                LOG.debug("floating IP %s had no association", row.physical_resource_id)
        return None

    def _set_fip_port(self, fip_id, port_id):
        row = common.resource_row(self.context, fip_id)
        if row is None:
            raise common.LocalCloudResourceError(
                "floating IP %s is not a local-cloud floating IP" % fip_id)
        db_api.resource_data_set(self.context, row.id, "associated_port", port_id)


# --- volumes ------------------------------------------------------------------------


class LocalVolume(LocalResource):
    """OS::Cinder::Volume: a Docker volume labelled with the stack; its id is the volume name."""

    real = real_volume.CinderVolume
    properties_schema = common.loose_schema(real.properties_schema)
    attributes_schema = dict(real.attributes_schema, id=attributes.Schema(
        "The volume's id (the Docker volume's name on the local cloud).",
        type=attributes.Schema.STRING))

    def handle_create(self):
        name = "astrostack-%s-%s-%s" % (common.root_stack_name(self), self.name,
                                        uuid.uuid4().hex[:8])
        labels = dict(common.labels_for(self))
        labels["astrostack.size_gb"] = str(self.properties["size"] or "")
        try:
            common.docker_client().volumes.create(name=name, driver="local", labels=labels)
        except docker_errors.APIError as exc:
            raise common.LocalCloudResourceError(
                "could not create Docker volume %s: %s" % (name, exc.explanation or exc)) from exc
        self.resource_id_set(name)
        self.save_show(self.describe(dict(self.properties)))

    def describe(self, props):
        show = super().describe(props)
        show.update(status="available", size=props.get("size"), bootable=False,
                    encrypted=False, availability_zone=props.get("availability_zone") or "nova",
                    volume_type=props.get("volume_type") or "local",
                    display_name=show["name"], display_description=props.get("description"),
                    metadata=props.get("metadata") or {}, multiattach=bool(props.get("multiattach")))
        return show

    def attachments(self):
        return [json.loads(value) for key, value in sorted(self.data().items())
                if key.startswith("attachment:")]

    def _resolve_attribute(self, name):
        if name == "id":
            return self.resource_id
        if name == "status":
            return "in-use" if self.attachments() else "available"
        if name in ("attachments", "attachments_list"):
            return self.attachments()
        return super()._resolve_attribute(name)

    def handle_delete(self):
        return common.deadline_from_now()

    def check_delete_complete(self, deadline):
        """Remove the Docker volume; wait (to a deadline) while a container still uses it."""
        if self.resource_id is None or deadline is None:
            return True
        try:
            common.docker_client().volumes.get(self.resource_id).remove()
        except docker_errors.NotFound:
            return True
        except docker_errors.APIError as exc:
            if not common.past(deadline):
                return False
            raise common.LocalCloudResourceError(
                "Docker volume %s is still in use: %s"
                % (self.resource_id, exc.explanation or exc)) from exc
        return True


class LocalVolumeAttachment(LocalResource):
    """OS::Cinder::VolumeAttachment: recorded on the volume.

    Docker cannot add a mount to a running container, so the volume's data is
    not hot-plugged into the VM on the local cloud; the record lets the
    volume answer ``status``/``attachments`` like Cinder.
    """

    real = real_volume.CinderVolumeAttachment
    properties_schema, attributes_schema = _copy_schemas(real)

    def handle_create(self):
        super().handle_create()
        volume = self._volume_row()
        record = {"id": self.resource_id, "attachment_id": self.resource_id,
                  "volume_id": self.properties["volume_id"],
                  "server_id": self.properties["instance_uuid"],
                  "device": self.properties["mountpoint"]}
        db_api.resource_data_set(self.context, volume.id, "attachment:" + self.resource_id,
                                 json.dumps(record))
        LOG.warning("volume %s attached to %s as a record only: the local cloud cannot "
                    "hot-plug a Docker volume into a running container",
                    self.properties["volume_id"], self.properties["instance_uuid"])

    def handle_update(self, json_snippet, tmpl_diff, prop_diff):
        if prop_diff:
            raise resource.UpdateReplace(self.name)

    def handle_delete(self):
        if self.resource_id is None:
            return None
        volume = common.resource_row(self.context, self.properties["volume_id"])
        if volume is not None:
            try:
                db_api.resource_data_delete(self.context, volume.id,
                                            "attachment:" + self.resource_id)
            except exception.NotFound:
                LOG.debug("attachment %s was not recorded", self.resource_id)
        return None

    def _volume_row(self):
        row = common.resource_row(self.context, self.properties["volume_id"])
        if row is None:
            raise common.LocalCloudResourceError(
                "volume %s is not a local-cloud volume" % self.properties["volume_id"])
        return row


# --- keypairs -----------------------------------------------------------------------


class LocalKeyPair(LocalResource):
    """OS::Nova::KeyPair: the given public key, or a generated ed25519 pair."""

    real = real_keypair.KeyPair
    properties_schema, attributes_schema = _copy_schemas(real)

    def handle_create(self):
        public_key = self.properties["public_key"]
        if not public_key:
            private_key, public_key = _generate_keypair(self.properties["name"])
            if self.properties["save_private_key"]:
                self.data_set("private_key", private_key, redact=True)
        self.data_set("public_key", public_key)
        self.resource_id_set(self.properties["name"])

    def _resolve_attribute(self, name):
        if name == "public_key":
            return self.data().get("public_key")
        if name == "private_key":
            return self.data().get("private_key", "")
        return None

    def _show_resource(self):
        return {"name": self.resource_id, "public_key": self.data().get("public_key"),
                "type": self.properties["type"] or "ssh"}

    def get_reference_id(self):
        return self.resource_id


def _generate_keypair(comment):
    """An OpenSSH ed25519 key pair: (private PEM, public line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, "%s %s" % (public, comment)


def resource_mapping():
    """Heat's plugin hook: the AstrostackLocal:: types this module provides."""
    return {
        TYPE_PREFIX + "Neutron::Net": LocalNet,
        TYPE_PREFIX + "Neutron::Subnet": LocalSubnet,
        TYPE_PREFIX + "Neutron::Router": LocalRouter,
        TYPE_PREFIX + "Neutron::RouterInterface": LocalRouterInterface,
        TYPE_PREFIX + "Neutron::SecurityGroup": LocalSecurityGroup,
        TYPE_PREFIX + "Neutron::SecurityGroupRule": LocalSecurityGroupRule,
        TYPE_PREFIX + "Neutron::Port": LocalPort,
        TYPE_PREFIX + "Neutron::FloatingIP": LocalFloatingIP,
        TYPE_PREFIX + "Neutron::FloatingIPAssociation": LocalFloatingIPAssociation,
        TYPE_PREFIX + "Cinder::Volume": LocalVolume,
        TYPE_PREFIX + "Cinder::VolumeAttachment": LocalVolumeAttachment,
        TYPE_PREFIX + "Nova::KeyPair": LocalKeyPair,
    }
