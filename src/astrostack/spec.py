"""The cluster spec: one YAML file -> a validated :class:`ClusterSpec`.

The spec is the only input a user writes. Everything that would make a stack
fail later (overlay too small, names that are not DNS-safe, more ranks than
hosts can hold, timeouts Heat refuses, too many Heat resources) is caught here,
and every error names the field and what is allowed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from astrostack import marks
from astrostack.errors import SpecError, quote, show_path
from astrostack.yamlio import STDIN, parse_yaml, read_yaml

# Where this machine's traffic reaches the local cloud's floating IPs from
# (the external network's gateway, see docs/local-cloud.md).
LOCAL_CLOUD_SOURCE = "172.24.4.1/32"
DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$")
TAG = re.compile(r"^[A-Za-z0-9_.:=-]{1,60}$")
# Nova allows 50 tags per server; astrostack puts two of its own (marks.py).
NOVA_MAX_TAGS = 50
MAX_USER_TAGS = NOVA_MAX_TAGS - 2
# Names of OpenStack things (images, flavors, networks): what Nova and Glance
# accept, less what would break a shell line, a YAML file or a terminal.
OPENSTACK_NAME_BAD = re.compile(r"[;`$\\\"'|&<>]")
KEYPAIR_NAME = re.compile(r"^[A-Za-z0-9_. -]{1,255}$")  # Nova's safe characters for keypair names
LOGIN_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Folders a share may not be mounted over (nor below, for the second set):
# mounting there hides what the host needs to boot, log in and run Docker.
SYSTEM_FOLDERS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc",
    "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/log", "/var/tmp",
    "/usr/local",
})
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
                "/sbin", "/sys", "/usr", "/var/lib/docker", "/var/lib/cloud", "/var/log")

# Heat's own limits (heat.conf defaults and the WaitCondition schema).
HEAT_MAX_RESOURCES_PER_STACK = 1000
HEAT_WAIT_CONDITION_MAX_S = 43200
HEAT_MIN_TIMEOUT_S = 60
# Resources outside the worker ResourceGroup, and per worker (port, server,
# its wait condition and handle, and the nested stack itself).
FIXED_HEAT_RESOURCES = 21
HEAT_RESOURCES_PER_WORKER = 5
# Addresses an overlay network uses besides the containers: network address,
# broadcast, gateway, and one load-balancer endpoint per Swarm node.
OVERLAY_RESERVED_ADDRESSES = 3
# A task the Swarm replaces (its host missed heartbeats, its container ended)
# keeps its address until the old task is gone: room for half of the nodes to
# be replaced at once. Without it, 200 nodes on 10 hosts in a /24 ran out of
# addresses as soon as the tasks of a few busy hosts were rescheduled, and the
# replacements could never start ("could not find an available IP").
OVERLAY_REPLACEMENT_SHARE = 0.5


# Checks the models share ------------------------------------------------------


def _dns_label(value: str) -> str:
    if not DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"{quote(value)} is not DNS-safe: use 1-32 chars of a-z, 0-9 and '-', starting with a letter"
        )
    return value


def _openstack_name(value: str) -> str:
    """A name of an image, flavor or network: printable, one line, no shell metacharacters."""
    if len(value) > 255 or not value.isprintable() or value != value.strip() or OPENSTACK_NAME_BAD.search(value):
        raise ValueError(f"{quote(value)} is not a usable name: 1-255 printable characters on one line, "
                         "without ; ` $ \\ \" ' | & < > or spaces at either end")
    return value


def _network(value: str) -> ipaddress.IPv4Network:
    if not isinstance(value, str) or not value.isascii():
        raise ValueError(f"{quote(value)} is not an IPv4 CIDR")
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{quote(value)} is not an IPv4 CIDR ({exc})") from None


def _usable_network(value: str, what: str) -> ipaddress.IPv4Network:
    """A CIDR that can be WHAT: not loopback, link-local, multicast, reserved or 0.0.0.0/8."""
    net = _network(value)
    kinds = [("loopback", net.is_loopback), ("link-local", net.is_link_local), ("multicast", net.is_multicast),
             ("reserved", net.is_reserved), ("unspecified (0.0.0.0/8)", net.subnet_of(ZERO_NET))]
    bad = [kind for kind, found in kinds if found]
    if bad or any(net.overlaps(other) for other in SPECIAL_NETS):
        kind = bad[0] if bad else "overlapping a loopback, link-local, multicast or reserved range"
        raise ValueError(f"{value} cannot be {what}: it is {kind}")
    return net


ZERO_NET = ipaddress.IPv4Network("0.0.0.0/8")
SPECIAL_NETS = tuple(ipaddress.IPv4Network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16",
                                                        "224.0.0.0/4", "240.0.0.0/4"))


def _not_a_system_folder(path: str) -> None:
    if path in SYSTEM_FOLDERS or any(path == tree or path.startswith(tree + "/") for tree in SYSTEM_TREES):
        raise ValueError(f"{path} is a system folder (or below one): mounting the share there would hide what "
                         "the hosts need; use a folder of its own, e.g. /mnt/share")


class Mode(str, Enum):
    swarm = "swarm"
    mpi = "mpi"


class Kind(str, Enum):
    mpi_cluster = "mpi-cluster"
    task_queue = "task-queue"


class RedisPlacement(str, Enum):
    per_worker = "per-worker"
    scheduler = "scheduler"


class OnFailure(str, Enum):
    rollback = "rollback"
    keep = "keep"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class ServerRole(_Section):
    """Flavor and (optional) image of one VM role."""

    flavor: str = Field(min_length=1, description="Nova flavor name or id.")
    image: Optional[str] = Field(
        default=None, min_length=1, description="Glance image for this role; default: servers.image."
    )

    @field_validator("flavor", "image")
    @classmethod
    def _names(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else _openstack_name(value)


class Servers(_Section):
    image: str = Field(
        default="debian-12",
        min_length=1,
        description="Glance image for every VM (Debian 12 or Ubuntu 22.04+ with cloud-init).",
    )
    manager: ServerRole = ServerRole(flavor="m1.large")
    worker: ServerRole = ServerRole(flavor="m1.large")
    nfs: ServerRole = ServerRole(flavor="m1.small")
    user: str = Field(default="debian", min_length=1, description="Login user of the image.")
    install_packages: StrictBool = Field(
        default=True,
        description="Install at boot the packages a role needs (docker.io, nfs-common, ...) that "
        "the image lacks; false: the image must have them all (a host fails, naming them, otherwise).",
    )

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _openstack_name(value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not LOGIN_USER.fullmatch(value):
            raise ValueError(f"{quote(value)} is not a login name: 1-32 chars of a-z, 0-9, '_' and '-'")
        return value


class Ssh(_Section):
    keypair: Optional[str] = Field(
        default=None,
        description="Existing Nova keypair; null: astrostack generates one per cluster "
        "and keeps the private key in its state directory (mode 0600).",
    )
    allowed_cidr: Optional[str] = Field(
        default=None,
        description="Who may SSH to the manager's floating IP, e.g. 203.0.113.7/32: the address "
        "astrostack itself reaches the cluster from. Required.",
    )

    @field_validator("keypair")
    @classmethod
    def _keypair(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not KEYPAIR_NAME.fullmatch(value):
            raise ValueError(f"{quote(value)} is not a Nova keypair name: 1-255 chars of A-Z, a-z, 0-9, '_', "
                             "'.', '-' and space")
        return value

    @field_validator("allowed_cidr")
    @classmethod
    def _cidr(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and _network(value).prefixlen > 0:
            _usable_network(value, "a source of SSH connections")
        return value


class Network(_Section):
    external: str = Field(default="public", min_length=1, description="External (provider) network for the router and floating IP.")
    cidr: str = Field(default="10.10.0.0/24", description="Private subnet of the cluster's VMs.")
    dns_nameservers: list[str] = Field(default_factory=lambda: ["8.8.8.8"])

    @field_validator("external")
    @classmethod
    def _external(cls, value: str) -> str:
        return _openstack_name(value)

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        net = _usable_network(value, "a cluster network")
        if net.prefixlen > 28:
            raise ValueError(f"{value} is too small for a cluster: use a /28 or larger")
        return value

    @field_validator("dns_nameservers")
    @classmethod
    def _dns(cls, value: list[str]) -> list[str]:
        for server in value:
            try:
                address = ipaddress.ip_address(server)
            except ValueError:
                raise ValueError(f"{quote(server)} is not an IP address") from None
            if address.is_loopback or address.is_multicast or address.is_unspecified:
                raise ValueError(f"{server} cannot be a DNS server of the VMs (loopback, multicast or unspecified)")
        return value


class Nfs(_Section):
    volume_size_gb: StrictInt = Field(default=100, ge=1, le=16384, description="Cinder volume size (GiB).")
    export_path: str = Field(default="/export/share", description="Export directory on the NFS server.")
    mount_point: str = Field(default="/mnt/share", description="Where every host mounts the share.")

    @field_validator("export_path", "mount_point")
    @classmethod
    def _abs(cls, value: str) -> str:
        if not re.fullmatch(r"/[A-Za-z0-9_./-]*", value) or ".." in value or not value.strip("/"):
            raise ValueError(f"{quote(value)} must be an absolute path below / made of [A-Za-z0-9_./-]")
        path = re.sub(r"/+", "/", value).rstrip("/")
        _not_a_system_folder(path)
        return path


class Overlay(_Section):
    name: str = Field(default="astro-net", description="Name of the Swarm overlay network.")
    subnet: str = Field(default="10.0.9.0/24", description="Overlay subnet; must hold every node.")
    encrypted: Union[Literal["auto"], StrictBool] = Field(
        default="auto",
        description="IPsec-encrypt overlay traffic between hosts. auto: encrypt where the hosts' "
        "kernel can (ESP with AES-GCM), else plain and reported; true: a host whose kernel cannot fails.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _dns_label(value)

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        _usable_network(value, "an overlay network")
        return value

    @field_validator("encrypted", mode="before")
    @classmethod
    def _encrypted(cls, value: Any) -> Any:
        if value != "auto" and not isinstance(value, bool):
            raise ValueError(f"must be auto, true or false, got {quote(value)}")
        return value


class Registry(_Section):
    url: Optional[str] = Field(
        default=None,
        description="host:port of a private registry the hosts pull from; null: the "
        "cluster runs one on the NFS server VM.",
    )
    insecure: StrictBool = Field(default=True, description="Plain-HTTP registry (added to insecure-registries).")

    @field_validator("url")
    @classmethod
    def _url(cls, value: Optional[str]) -> Optional[str]:
        match = re.fullmatch(r"[A-Za-z0-9.-]+(?::([0-9]{1,5}))?", value or "")
        if value is not None and (not match or not 1 <= int(match.group(1) or 80) <= 65535):
            raise ValueError(f"{quote(value)} must be host[:port] (port 1-65535), without scheme or path")
        return value


class Application(_Section):
    image: str = Field(default="astrostack/mpi-base:latest", description="Image of the MPI containers.")
    slots_per_node: StrictInt = Field(default=1, ge=1, le=256, description="MPI slots per container.")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]{0,254}", value):
            raise ValueError(f"{quote(value)} is not a container image reference")
        return value


class Timeouts(_Section):
    """Deadlines per phase, in seconds."""

    stack_create: StrictInt = Field(default=900, description="Heat resources created (VMs ACTIVE).")
    hosts_ready: StrictInt = Field(default=900, description="Every host signalled its wait condition.")
    nodes_ready: StrictInt = Field(default=600, description="Every MPI rank running and reachable.")
    delete: StrictInt = Field(default=600, description="Stack deletion.")

    @field_validator("stack_create", "hosts_ready", "nodes_ready", "delete")
    @classmethod
    def _heat_range(cls, value: int) -> int:
        if not HEAT_MIN_TIMEOUT_S <= value <= HEAT_WAIT_CONDITION_MAX_S:
            raise ValueError(
                f"{value} s is outside Heat's range {HEAT_MIN_TIMEOUT_S}..{HEAT_WAIT_CONDITION_MAX_S} s"
            )
        return value

    @property
    def total(self) -> int:
        return self.stack_create + self.hosts_ready + self.nodes_ready


DASK_IMAGE = "astrostack/dask:latest"


class TaskQueue(_Section):
    """A task-queue cluster (kind: task-queue): a Dask scheduler on the manager,
    one Dask worker per worker VM, and a Redis result store."""

    processes: StrictInt = Field(default=1, ge=1, le=64, description="Dask worker processes per worker VM.")
    threads: StrictInt = Field(default=1, ge=1, le=256, description="Threads per Dask worker process.")
    redis: RedisPlacement = Field(
        default=RedisPlacement.scheduler,
        description="Where the Redis result store runs: `scheduler` (one, on the manager) or `per-worker` "
        "(one on each worker VM, holding the results of the tasks that VM ran).",
    )
    dashboard: StrictBool = Field(default=True, description="Serve Dask's dashboard (8787, from ssh.allowed_cidr only).")


FaultKind = Literal["cloud-init-fail", "never-signal", "die-after-boot"]


class Fault(_Section):
    host: str = Field(description="Host name, e.g. manager, worker-0, nfs.")
    fault: FaultKind


MANAGER_HOST = "manager"
WORKER_HOST_PREFIX = "worker-"


def worker_host(index: int | str) -> str:
    """Worker INDEX's host id (its index in the workers' ResourceGroup, or Heat's %index%): worker-INDEX."""
    return f"{WORKER_HOST_PREFIX}{index}"


def server_name(cluster: str, host: str) -> str:
    """HOST's Nova server name, also its hostname and Swarm node name: CLUSTER-HOST
    (heat_templates/ join the same two with list_join)."""
    return f"{cluster}-{host}"


class ClusterSpec(_Section):
    """An astrostack cluster."""

    name: str = Field(description="Cluster name: DNS-safe, 1-32 chars, lower case.")
    cloud: str = Field(default="local", description="clouds.yaml cloud name, or `local`.")
    kind: Kind = Field(default=Kind.mpi_cluster, description="`mpi-cluster` (MPI ranks in containers) or "
                       "`task-queue` (a Dask scheduler and workers with a Redis result store).")
    mode: Mode = Field(default=Mode.swarm, description="`swarm` (Docker Swarm services) or `mpi` (plain MPI hosts).")
    hosts: StrictInt = Field(default=3, ge=1, le=1000, description="VMs that run containers, manager included.")
    nodes: StrictInt = Field(default=12, ge=1, le=100000, description="MPI ranks (containers in swarm mode), master included.")
    servers: Servers = Servers()
    ssh: Ssh = Ssh()
    network: Network = Network()
    nfs: Nfs = Nfs()
    overlay: Overlay = Overlay()
    registry: Registry = Registry()
    application: Application = Application()
    task_queue: Optional[TaskQueue] = Field(default=None, description="kind: task-queue only: Dask workers and Redis.")
    timeouts: Timeouts = Timeouts()
    on_failure: OnFailure = Field(default=OnFailure.rollback, description="`rollback` (delete everything) or `keep` for debugging.")
    tags: list[str] = Field(default_factory=list, description="Extra tags on every taggable resource.")
    faults: list[Fault] = Field(default_factory=list, description="Faults injected on purpose, to see how a "
                                "cluster fails (tests and demos; any cloud).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _dns_label(value)

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
            raise ValueError(f"{quote(value)} is not a clouds.yaml cloud name")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not TAG.fullmatch(tag):
                raise ValueError(f"{quote(tag)}: tags are 1-60 chars of [A-Za-z0-9_.:=-]")
            if tag == marks.GENERIC_TAG or tag.startswith(marks.TAG_PREFIX):
                raise ValueError(f"{quote(tag)} is astrostack's own mark (it names the cluster a resource "
                                 "belongs to, for the sweeper): pick another tag")
        if len(value) > MAX_USER_TAGS:
            raise ValueError(f"{len(value)} tags: Nova allows {NOVA_MAX_TAGS} per server and astrostack adds 2 "
                             f"of its own: use at most {MAX_USER_TAGS}")
        if len(set(value)) != len(value):
            raise ValueError(f"{quote(next(t for t in value if value.count(t) > 1))} is listed twice")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        if self.kind is Kind.task_queue:
            _settle_task_queue(self)
        elif self.task_queue is not None:
            raise ValueError("task_queue: only for kind: task-queue (this spec is kind: mpi-cluster)")
        if self.kind is Kind.mpi_cluster and self.nodes < self.hosts:
            raise ValueError(f"nodes: {self.nodes} is fewer than hosts ({self.hosts}): every host runs at least one rank")
        _check_overlay_capacity(self)
        _check_overlay_apart_from_network(self)
        _check_network_capacity(self)
        _check_heat_resources(self)
        if self.nfs.mount_point == self.nfs.export_path:
            raise ValueError(f"nfs.mount_point: {self.nfs.mount_point} is also nfs.export_path: the share would "
                             "be mounted over its own export; use another folder (e.g. /mnt/share)")
        if self.ssh.allowed_cidr is None:
            raise ValueError("ssh.allowed_cidr: required: where astrostack reaches the manager's floating IP "
                             f"from (e.g. your office /32; {LOCAL_CLOUD_SOURCE} on the local cloud)")
        for fault in self.faults:
            if fault.host not in self.host_names() + ["nfs"]:
                raise ValueError(f"faults: no host {quote(fault.host)} (hosts: manager, worker-0..worker-{self.workers - 1}, nfs)")
        return self

    # Derived values -----------------------------------------------------

    @property
    def is_task_queue(self) -> bool:
        return self.kind is Kind.task_queue

    @property
    def queue(self) -> TaskQueue:
        """The task-queue settings (defaults for a task-queue spec that gives none)."""
        return self.task_queue or TaskQueue()

    @property
    def workers(self) -> int:
        """Worker VMs (hosts minus the manager)."""
        return self.hosts - 1

    def host_names(self) -> list[str]:
        return [MANAGER_HOST] + [worker_host(i) for i in range(self.workers)]

    def ranks_per_host(self) -> list[int]:
        """How the nodes spread over hosts, manager first (the master's host)."""
        base, extra = divmod(self.nodes, self.hosts)
        return [base + (1 if i < extra else 0) for i in range(self.hosts)]

    def heat_resource_count(self) -> int:
        return FIXED_HEAT_RESOURCES + HEAT_RESOURCES_PER_WORKER * self.workers

    def spec_hash(self) -> str:
        data = self.model_dump(mode="json")
        if self.kind is Kind.mpi_cluster:  # the hash of an MPI cluster's spec as before kinds existed
            data.pop("kind")
            data.pop("task_queue")
        canonical = json.dumps(data, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def warnings(self) -> list[str]:
        """Valid but risky choices, said loudly by every command that loads the spec."""
        found = []
        cidr = self.ssh.allowed_cidr
        if cidr is not None and ipaddress.IPv4Network(cidr).prefixlen == 0:
            found.append(f"ssh.allowed_cidr is {cidr}: any address on the Internet may try SSH on the manager's "
                         "floating IP; use the address astrostack reaches it from (e.g. 203.0.113.7/32)")
        return found

    def fault_for(self, host: str) -> Optional[str]:
        for fault in self.faults:
            if fault.host == host:
                return fault.fault
        return None


def _settle_task_queue(spec: ClusterSpec) -> None:
    """A task-queue cluster: the scheduler on the manager and at least one worker VM;
    its nodes are its Dask worker processes, derived, never chosen."""
    if spec.hosts < 2:
        raise ValueError(f"hosts: {spec.hosts}: a task-queue cluster needs at least 2 hosts (the scheduler VM "
                         "and one worker VM)")
    if spec.mode is Mode.mpi:
        raise ValueError("mode: mpi is for kind mpi-cluster; a task-queue cluster runs its Dask and Redis "
                         "containers on the hosts' network (leave mode out)")
    if spec.task_queue is None:
        spec.task_queue = TaskQueue()
    workers = spec.workers * spec.task_queue.processes
    if "nodes" in spec.model_fields_set and spec.nodes != workers:
        raise ValueError(f"nodes: {spec.nodes}: a task-queue cluster's nodes are its Dask worker processes, "
                         f"(hosts - 1) x task_queue.processes = {workers}; leave nodes out")
    spec.nodes = workers
    if "application" not in spec.model_fields_set:
        spec.application = Application(image=DASK_IMAGE)


def overlay_addresses_needed(nodes: int) -> int:
    """Overlay addresses NODES containers need: their own and room for half of them being
    replaced at once (a replacement gets its address before the old task's is freed)."""
    return nodes + math.ceil(nodes * OVERLAY_REPLACEMENT_SHARE)


def overlay_prefix_for(hosts: int, nodes: int) -> int:
    """The longest prefix of an overlay subnet that holds NODES containers on HOSTS hosts."""
    return 32 - math.ceil(math.log2(overlay_addresses_needed(nodes) + hosts + OVERLAY_RESERVED_ADDRESSES))


def _check_overlay_capacity(spec: ClusterSpec) -> None:
    if spec.mode is not Mode.swarm or spec.kind is Kind.task_queue:
        return
    net = ipaddress.IPv4Network(spec.overlay.subnet)
    usable = net.num_addresses - OVERLAY_RESERVED_ADDRESSES - spec.hosts
    if overlay_addresses_needed(spec.nodes) > usable:
        raise ValueError(
            f"overlay.subnet: {spec.overlay.subnet} has {max(usable, 0)} addresses for containers with "
            f"{spec.hosts} hosts; {spec.nodes} nodes need {overlay_addresses_needed(spec.nodes)} (room for half "
            f"of them being replaced at once): use a /{overlay_prefix_for(spec.hosts, spec.nodes)} or larger"
        )


def _check_overlay_apart_from_network(spec: ClusterSpec) -> None:
    overlay = ipaddress.IPv4Network(spec.overlay.subnet)
    private = ipaddress.IPv4Network(spec.network.cidr)
    if overlay.overlaps(private):
        raise ValueError(
            f"overlay.subnet: {spec.overlay.subnet} overlaps network.cidr {spec.network.cidr}; "
            "containers could not reach the hosts: pick disjoint ranges"
        )


def _check_network_capacity(spec: ClusterSpec) -> None:
    net = ipaddress.IPv4Network(spec.network.cidr)
    # network, gateway, DHCP, broadcast, the NFS server
    usable = net.num_addresses - 5
    if spec.hosts > usable:
        raise ValueError(f"network.cidr: {spec.network.cidr} holds {usable} VMs, not {spec.hosts} hosts + NFS")


def _check_heat_resources(spec: ClusterSpec) -> None:
    count = spec.heat_resource_count()
    if count > HEAT_MAX_RESOURCES_PER_STACK:
        max_hosts = (HEAT_MAX_RESOURCES_PER_STACK - FIXED_HEAT_RESOURCES) // HEAT_RESOURCES_PER_WORKER + 1
        raise ValueError(
            f"hosts: {spec.hosts} hosts need {count} Heat resources, over Heat's default limit of "
            f"{HEAT_MAX_RESOURCES_PER_STACK}: use at most {max_hosts} hosts"
        )


# Loading --------------------------------------------------------------------


def load_spec(path: str | Path) -> ClusterSpec:
    """Read and validate a spec file (``-``: standard input); raise :class:`SpecError` with one line."""
    source = "<stdin>" if str(path) == STDIN else show_path(path)
    return spec_from_data(read_yaml(path, "spec", SpecError), source)


def parse_spec(text: str, source: str = "<spec>") -> ClusterSpec:
    return spec_from_data(parse_yaml(text, source, SpecError), source)


def spec_from_data(data: Any, source: str) -> ClusterSpec:
    """Whatever a YAML file held -> a validated spec, or :class:`SpecError` with one line."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping with at least `name:`")
    return spec_from_dict(data, source)


def spec_from_dict(data: dict[str, Any], source: str = "<spec>") -> ClusterSpec:
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first error as `field: message`, plus a count of the others; what the
    user wrote is quoted (escapes shown, bounded length), never echoed raw."""
    errors = exc.errors()
    first = errors[0]
    field = ".".join(_field_part(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field (see `astrostack spec schema`)"
    elif first["type"] == "missing":
        message = "required field is missing"
    elif first["type"] in ("enum", "literal_error"):
        message = f"{message}, got {quote(first.get('input'))}"
    elif first["type"].endswith("_type") or first["type"].endswith("_parsing"):
        message = f"{message}, got {_described_input(first.get('input'))}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    # Cross-field checks (model validators) already start with their field.
    return f"{field}: {message}{more}" if field else f"{message}{more}"


def _field_part(part: Any) -> str:
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text) else quote(text, limit=40)


def _described_input(value: Any) -> str:
    """What the user wrote where a type was wrong, said so that the fix is plain."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"{quote(value)} (text: write numbers and booleans without quotes)"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return quote(value)


def json_schema() -> dict[str, Any]:
    schema = ClusterSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "astrostack cluster spec"
    return schema


SPEC_TEMPLATE = """\
# astrostack cluster spec. Validate: astrostack validate {filename}
# Every field but `name` and `ssh.allowed_cidr` has a default; `astrostack spec schema` prints them all.
name: {name}                 # DNS-safe, lower case, <= 32 chars; tags every resource
cloud: {cloud}               # `local` (this machine) or a clouds.yaml cloud name
mode: swarm                  # swarm: Docker Swarm services; mpi: plain MPI hosts
hosts: 3                     # VMs that run containers, manager included
nodes: 12                    # MPI ranks (containers), master included; >= hosts

servers:
  image: debian-12           # Glance image with cloud-init (Debian 12 / Ubuntu 22.04+)
  user: debian
  manager: {{flavor: m1.large}}
  worker: {{flavor: m1.large}}
  nfs: {{flavor: m1.small}}

ssh:
  keypair: null              # existing Nova keypair, or null to generate one per cluster
  allowed_cidr: {allowed}      # who may SSH to the manager's floating IP

network:
  external: public           # provider network for the router and floating IP
  cidr: 10.10.0.0/24

nfs:
  volume_size_gb: 100
  export_path: /export/share
  mount_point: /mnt/share

overlay:
  name: astro-net
  subnet: 10.0.9.0/24        # a /24 holds about 250 containers
  encrypted: auto            # auto: where the hosts' kernel can (reported otherwise)

registry:
  url: null                  # host:port of your registry; null: one runs on the NFS VM

application:
  image: astrostack/mpi-base:latest

timeouts:                    # seconds per phase
  stack_create: 900
  hosts_ready: 900
  nodes_ready: 600

on_failure: rollback         # or `keep` to keep a failed cluster for debugging
tags: []
"""


def starter_spec(name: str = "my-cluster", cloud: str = "local", filename: str = "cluster.yaml") -> str:
    allowed = LOCAL_CLOUD_SOURCE if cloud == "local" else "203.0.113.7/32"
    text = SPEC_TEMPLATE.format(name=name, cloud=cloud, allowed=allowed, filename=filename)
    parse_spec(text, source="starter spec")  # the starter must always validate
    return text


__all__ = [
    "ClusterSpec",
    "Kind",
    "Mode",
    "RedisPlacement",
    "TaskQueue",
    "OnFailure",
    "load_spec",
    "parse_spec",
    "spec_from_dict",
    "json_schema",
    "starter_spec",
]
