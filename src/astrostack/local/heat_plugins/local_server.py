"""Local-cloud stand-in for Nova: ``AstrostackLocal::Nova::Server``.

A server is a container of ``astrostack/vm:latest`` that boots like a cloud
image (the real cloud-init on a NoCloud seed holding the server's
user_data). ``heat_templates/local-environment.yaml`` maps
``OS::Nova::Server`` here, so an unchanged real-cloud template deploys.

Loaded by the local Heat engine through ``plugin_dirs`` (as
``heat.engine.plugins.local_server``), inside Heat's venv where astrostack
is not installed: the container runtime ``src/astrostack/local/vm.py`` (stdlib
+ Docker SDK only) is loaded by path, never imported as ``astrostack``.

Server metadata understood on the local cloud only (ignored by Nova):

* ``astrostack_shared_mount``: a path inside the VM where a per-stack host
  directory ``$ASTROSTACK_LOCAL_SHARES/<cluster name>`` (default root
  ``/var/lib/astrostack/local/shares``) is bind-mounted: the NFS substitute;
* ``astrostack_fault``: ``cloud-init-fail``, ``never-signal`` or
  ``die-after-boot`` (with ``astrostack_fault_delay_s``, default 5): fault
  injection carried out by the VM's entrypoint.

Like Nova, the server is ACTIVE when its container runs; it does not wait for
cloud-init (a WaitCondition does).
"""

import importlib.util
import ipaddress
import json
import os
import sys
import time
from pathlib import Path

from heat.common import exception
from heat.engine import resource, translation
from heat.engine.plugins import local_common as common
from heat.engine.resources.openstack.nova import server as real_server
from heat.rpc import api as rpc_api
from oslo_log import log as logging
from oslo_utils import uuidutils

LOG = logging.getLogger(__name__)

TYPE_NAME = "AstrostackLocal::Nova::Server"
SHARES_ENV = "ASTROSTACK_LOCAL_SHARES"
DEFAULT_SHARES = "/var/lib/astrostack/local/shares"
META_SHARED_MOUNT = "astrostack_shared_mount"
META_FAULT = "astrostack_fault"
META_FAULT_DELAY = "astrostack_fault_delay_s"
FAULTS = ("cloud-init-fail", "never-signal", "die-after-boot")
LABEL_SERVER_ID = "astrostack.server_id"
LABEL_SHARED_DIR = "astrostack.shared_dir"
BOOT_DEADLINE_S = 120.0
VM_MODULE_PATH = Path(__file__).resolve().parent.parent / "vm.py"


def _load_vm_module():
    """Load ``src/astrostack/local/vm.py`` by path under a name of its own."""
    name = "astrostack_local_vm"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, VM_MODULE_PATH)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load the astrostack VM runtime from %s" % VM_MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


vm = _load_vm_module()
S = real_server.Server  # property and attribute names of the real resource


class LocalServer(resource.Resource):
    """OS::Nova::Server as a container VM running the real cloud-init."""

    properties_schema = common.loose_schema(S.properties_schema)
    attributes_schema = dict(S.attributes_schema)
    default_client_name = None
    entity = None

    # --- validation and dependencies -----------------------------------------------

    def translation_rules(self, props):
        """The real Server's renames (``networks.uuid`` -> ``network`` ...), no lookups."""
        return [
            translation.TranslationRule(props, translation.TranslationRule.REPLACE,
                                        translation_path=[S.NETWORKS, S.NETWORK_ID],
                                        value_name=S.NETWORK_UUID),
            translation.TranslationRule(props, translation.TranslationRule.REPLACE,
                                        translation_path=[S.BLOCK_DEVICE_MAPPING_V2,
                                                          S.BLOCK_DEVICE_MAPPING_IMAGE],
                                        value_name=S.BLOCK_DEVICE_MAPPING_IMAGE_ID),
        ]

    def validate(self):
        """Reject what the local cloud cannot do, with the reason, before anything is made."""
        super().validate()
        metadata = self.properties[S.METADATA] or {}
        fault = metadata.get(META_FAULT)
        if fault is not None and fault not in FAULTS:
            raise exception.StackValidationFailed(message="server %s: metadata %s=%r is not one "
                                                  "of %s" % (self.name, META_FAULT, fault,
                                                             ", ".join(FAULTS)))
        mount = metadata.get(META_SHARED_MOUNT)
        if mount is not None and not str(mount).startswith("/"):
            raise exception.StackValidationFailed(message="server %s: metadata %s must be an "
                                                  "absolute path, not %r"
                                                  % (self.name, META_SHARED_MOUNT, mount))
        for entry in self.properties[S.NETWORKS] or []:
            if not (entry.get(S.NETWORK_PORT) or entry.get(S.NETWORK_ID)):
                raise exception.StackValidationFailed(
                    message="server %s: every networks entry needs a port or a network on the "
                    "local cloud" % self.name)

    def add_dependencies(self, deps):
        """Like the real Server: subnets of the server's networks are created first."""
        super().add_dependencies(deps)
        try:
            nets = [entry.get(S.NETWORK_ID) for entry in self.properties[S.NETWORKS] or []]
        except (ValueError, TypeError):
            return  # property errors are reported by validation, in context
        for res in self.stack.values():
            if not res.has_interface("OS::Neutron::Subnet"):
                continue
            try:
                subnet_net = res.properties.get("network")
            except (ValueError, TypeError):
                continue
            if any(net is None or net == subnet_net for net in nets) and nets:
                deps += (self, res)

    # --- create ---------------------------------------------------------------------

    def handle_create(self):
        """Boot the container VM; returns a deadline for check_create_complete."""
        self.resource_id_set(uuidutils.generate_uuid())
        attachments = self._attachments()
        if not attachments:
            raise common.LocalCloudResourceError(
                "server %s has no networks: on the local cloud a server needs a port or a "
                "network" % self.name)
        metadata = self.properties[S.METADATA] or {}
        shared_dirs = self._shared_dirs(metadata)
        labels = dict(common.labels_for(self))
        labels[LABEL_SERVER_ID] = self.resource_id
        if shared_dirs:
            labels[LABEL_SHARED_DIR] = shared_dirs[0][0]
        first, extra = attachments[0], attachments[1:]
        try:
            container_id = vm.boot_vm(
                self._container_name(), self._user_data(), self._meta_data(metadata),
                first["docker_network"], first["ip_address"], labels, shared_dirs,
                hostname=self._hostname(), env=self._fault_env(metadata),
                mac=first.get("mac_address"),
                extra_networks=[(a["docker_network"], a["ip_address"]) for a in extra])
        except vm.VMError as exc:
            raise common.LocalCloudResourceError("server %s: %s" % (self.name, exc)) from exc
        self.data_set("container_id", container_id)
        LOG.info("server %s: container %s at %s", self.name, self._container_name(),
                 ", ".join(a["ip_address"] for a in attachments))
        return time.monotonic() + BOOT_DEADLINE_S

    def check_create_complete(self, deadline):
        """ACTIVE when the container runs; a stopped container is a server in ERROR."""
        try:
            state = vm.vm_state(self._container_name())
            if state.running:
                return True
            if state.status in ("exited", "dead", "missing"):
                raise common.LocalCloudResourceError(
                    "VM %s went to ERROR: its container %s (exit code %s)%s"
                    % (self._hostname(), state.status, state.exit_code, self._log_tail(state)))
        except vm.VMError as exc:
            raise common.LocalCloudResourceError("server %s: %s" % (self.name, exc)) from exc
        if time.monotonic() > deadline:
            raise common.LocalCloudResourceError(
                "server %s: container still %s after %.0f s" % (self.name, state.status,
                                                                BOOT_DEADLINE_S))
        return False

    def _log_tail(self, state):
        if state.status == "missing":
            return ""
        return ": " + vm.log_tail(self._container_name())

    def _container_name(self):
        """Unique and stable for this resource, so delete finds it even after a failed create."""
        return self.physical_resource_name()

    def _hostname(self):
        return self.properties[S.NAME] or self.physical_resource_name()

    def _user_data(self):
        """user_data as Nova gets it; a software config id is resolved like the real Server."""
        content = self.properties[S.USER_DATA] or ""
        fmt = self.properties[S.USER_DATA_FORMAT]
        if fmt in (S.RAW, S.SOFTWARE_CONFIG) and uuidutils.is_uuid_like(content):
            with self.rpc_client().ignore_error_by_name("NotFound"):
                config = self.rpc_client().show_software_config(self.context, content)
                return config[rpc_api.SOFTWARE_CONFIG_CONFIG]
        if fmt != S.RAW:
            LOG.warning("server %s: user_data_format %s is passed as RAW on the local cloud "
                        "(no heat-cfntools / os-collect-config wrapping)", self.name, fmt)
        return content

    def _meta_data(self, metadata):
        """NoCloud meta-data: instance id, hostname, the key pair's key, the metadata map."""
        meta = {"instance-id": self.resource_id, "local-hostname": self._hostname(),
                "meta": {str(k): v if isinstance(v, str) else json.dumps(v)
                         for k, v in metadata.items()}}
        key_name = self.properties[S.KEY_NAME]
        if key_name:
            public_key = common.keypair_public_key(self.context, key_name)
            if public_key:
                meta["public-keys"] = [public_key]
            else:
                LOG.warning("server %s: key pair %s is not a local-cloud key pair; no key is "
                            "installed", self.name, key_name)
        return meta

    def _fault_env(self, metadata):
        """Environment of the VM's entrypoint that injects a fault, if asked."""
        fault = metadata.get(META_FAULT)
        if not fault:
            return {}
        LOG.warning("server %s: fault injected: %s", self.name, fault)
        env = {"ASTROSTACK_FAULT": fault}
        if metadata.get(META_FAULT_DELAY) is not None:
            env["ASTROSTACK_FAULT_DELAY_S"] = str(int(metadata[META_FAULT_DELAY]))
        return env

    def _shared_dirs(self, metadata):
        """The per-stack host directory bind-mounted at ``astrostack_shared_mount``."""
        mount = metadata.get(META_SHARED_MOUNT)
        if not mount:
            return []
        # By cluster name: astrostack stages images there before the stack exists.
        cluster = common.labels_for(self)[common.LABEL_CLUSTER]
        host_dir = os.path.join(os.environ.get(SHARES_ENV) or DEFAULT_SHARES, cluster)
        os.makedirs(host_dir, mode=0o755, exist_ok=True)
        return [(host_dir, str(mount))]

    # --- networks -------------------------------------------------------------------

    def _attachments(self):
        """One dict per ``networks`` entry: docker_network, ip_address, mac, net/subnet/port ids.

        Stored after each entry, so a failure half-way still lets delete give
        back the addresses already reserved.
        """
        attachments = []
        for entry in self.properties[S.NETWORKS] or []:
            attachments.append(self._attach(entry))
            self.data_set("attachments", json.dumps(attachments))
        return attachments

    def _attach(self, entry):
        port_id = entry.get(S.NETWORK_PORT)
        if port_id:
            binding = common.port_binding(self.context, port_id)
            if not binding.get("docker_network"):
                raise common.LocalCloudResourceError(
                    "port %s of server %s has no Docker network (its subnet is not a local-cloud "
                    "subnet)" % (port_id, self.name))
            return dict(binding, port_id=port_id, allocated=False)
        return self._attach_to_network(entry)

    def _attach_to_network(self, entry):
        """A network without a port: reserve an address (the fixed_ip if given) like Nova."""
        net_id = entry[S.NETWORK_ID]
        network = common.docker_network_for_net(net_id)
        if network is None:
            raise common.LocalCloudResourceError(
                "network %s of server %s has no subnet on the local cloud" % (net_id, self.name))
        subnet_id = entry.get(S.NETWORK_SUBNET) or network.attrs["Labels"][common.LABEL_SUBNET_ID]
        address = common.allocate_ip(self.context, subnet_id, self.resource_id,
                                     entry.get(S.NETWORK_FIXED_IP))
        return {"ip_address": address, "mac_address": None, "docker_network": network.name,
                "subnet_id": subnet_id, "network_id": net_id, "port_id": None, "allocated": True}

    def _stored_attachments(self):
        return json.loads(self.data().get("attachments") or "[]")

    def _network_name(self, net_id):
        """The Neutron net's name, as Nova keys ``addresses`` by it."""
        show = common.resource_data(self.context, net_id).get("show")
        return (json.loads(show).get("name") if show else None) or net_id

    # --- attributes -----------------------------------------------------------------

    def _addresses(self):
        addresses = {}
        for attachment in self._stored_attachments():
            ip = attachment["ip_address"]
            addresses.setdefault(self._network_name(attachment["network_id"]), []).append({
                "addr": ip, "version": ipaddress.ip_address(ip).version,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": attachment.get("mac_address"),
                "port": attachment.get("port_id")})
        return addresses

    def _networks(self):
        """Nova's ``networks``: net name -> IPs, also keyed by the net id (as Heat extends it)."""
        networks = {}
        for attachment in self._stored_attachments():
            for key in (self._network_name(attachment["network_id"]), attachment["network_id"]):
                networks.setdefault(key, []).append(attachment["ip_address"])
        return networks

    def _first_address(self):
        attachments = self._stored_attachments()
        return attachments[0]["ip_address"] if attachments else ""

    def _resolve_attribute(self, name):
        if self.resource_id is None:
            return None
        resolvers = {
            S.NAME_ATTR: self._hostname,
            S.FIRST_ADDRESS: self._first_address,
            S.ADDRESSES: self._addresses,
            S.NETWORKS_ATTR: self._networks,
            S.INSTANCE_NAME: self._container_name,
            S.ACCESSIPV4: self._first_address,
            S.ACCESSIPV6: lambda: "",
            S.CONSOLE_URLS: self._console_urls,
            S.TAGS_ATTR: lambda: self.properties[S.TAGS] or [],
            S.OS_COLLECT_CONFIG: lambda: self.metadata_get().get("os-collect-config", {}),
        }
        resolver = resolvers.get(name)
        return resolver() if resolver else None

    def _console_urls(self):
        """No VNC on the local cloud: the commands that show the console instead."""
        container = self._container_name()
        return {"log": "docker exec %s cat /var/log/cloud-init-output.log" % container,
                "shell": "docker exec -it %s bash" % container}

    def _show_resource(self):
        """The server as ``openstack server show`` would show it."""
        state = vm.vm_state(self._container_name())
        status = {"running": "ACTIVE", "created": "BUILD", "restarting": "REBOOT",
                  "exited": "SHUTOFF", "missing": "DELETED"}.get(state.status, "ERROR")
        return {"id": self.resource_id, "name": self._hostname(), "status": status,
                "addresses": self._addresses(), "metadata": self.properties[S.METADATA] or {},
                "image": {"id": self.properties[S.IMAGE]},
                "flavor": {"original_name": self.properties[S.FLAVOR]},
                "key_name": self.properties[S.KEY_NAME],
                "OS-EXT-SRV-ATTR:instance_name": self._container_name(),
                "OS-EXT-SRV-ATTR:hostname": self._hostname(),
                "accessIPv4": self._first_address(), "accessIPv6": "",
                "tags": self.properties[S.TAGS] or [],
                "astrostack:container_status": state.status,
                "astrostack:container_exit_code": state.exit_code}

    # --- update and delete ------------------------------------------------------------

    def handle_update(self, json_snippet, tmpl_diff, prop_diff):
        """Replace when the VM itself would change; metadata, name, tags are recorded."""
        replacing = {S.NETWORKS, S.IMAGE, S.BLOCK_DEVICE_MAPPING, S.BLOCK_DEVICE_MAPPING_V2}
        if S.USER_DATA in prop_diff and self.properties[S.USER_DATA_UPDATE_POLICY] != "IGNORE":
            raise resource.UpdateReplace(self.name)
        if S.METADATA in prop_diff:
            self._check_local_metadata_unchanged(prop_diff[S.METADATA] or {})
        if replacing & set(prop_diff):
            raise resource.UpdateReplace(self.name)
        if S.FLAVOR in prop_diff:
            LOG.info("server %s: flavor -> %s recorded (containers have no flavor)",
                     self.name, prop_diff[S.FLAVOR])

    def _check_local_metadata_unchanged(self, new_metadata):
        """The shared mount and fault are boot-time settings: changing them replaces the VM."""
        old_metadata = self.properties[S.METADATA] or {}
        for key in (META_SHARED_MOUNT, META_FAULT, META_FAULT_DELAY):
            if old_metadata.get(key) != new_metadata.get(key):
                raise resource.UpdateReplace(self.name)

    def handle_delete(self):
        """Remove the container and its volumes; give back addresses Nova-style ports held."""
        if self.resource_id is None:
            return None
        try:
            vm.delete_vm(self._container_name())
        except vm.VMError as exc:
            raise common.LocalCloudResourceError("server %s: %s" % (self.name, exc)) from exc
        for attachment in self._stored_attachments():
            if attachment.get("allocated"):
                common.release_ip(self.context, attachment["subnet_id"],
                                  attachment["ip_address"])
        return None


def resource_mapping():
    """Heat's plugin hook."""
    return {TYPE_NAME: LocalServer}
