"""The NFS substitute's hypervisor side: exports registered by server VMs, trees attached into clients.

This kernel has neither an NFS server nor an NFS client, so the VM image's
``exportfs`` and ``mount.nfs`` substitutes ask the hypervisor instead (over
the channel). The data path is not NFS: the client VM gets the server VM's
exported directory tree itself (a detached mount copy moved into its mount
namespace, :mod:`.mountns`), after its own real TCP connection to
SERVER:2049 crossed the network and its security groups. Admission follows
exports(5): the export covering the path, the first client entry matching
the client's address (checked against the client's own fixed IPs) or
hostname; ``ro`` is honoured, root squashing is not substituted.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, replace

from . import mountns
from .containers import Docker
from .errors import ChannelRefused, HypervisorError
from .exports import ExportsError, find_access, is_exported, parse_exports
from .state import InstanceState, ShareMount, StateStore

LOG = logging.getLogger(__name__)
HELPER_TIMEOUT_S = 30.0


@dataclass
class Shares:
    store: StateStore
    docker: Docker
    helper_timeout_s: float = HELPER_TIMEOUT_S

    def handle(self, instance_uuid: str, request: dict, peer_pid: int) -> dict:
        """Answer one channel request of INSTANCE_UUID (the socket it came on)."""
        operation = request.get("op")
        try:
            if operation == "exports":
                return self.register_exports(instance_uuid, str(request.get("text", "")))
            if operation == "list-exports":
                return {"ok": True, "exports": self._rendered(self._caller(instance_uuid).exports_text)}
            if operation == "mount":
                return self.attach(instance_uuid, request, peer_pid)
            raise ChannelRefused(f"unknown request {operation!r}", "error")
        except ChannelRefused as exc:
            LOG.warning("hypervisor channel of %s: %s", instance_uuid, exc)
            return {"ok": False, "reason": exc.reason, "error": str(exc)}
        except HypervisorError as exc:
            LOG.error("hypervisor channel of %s: %s", instance_uuid, exc)
            return {"ok": False, "reason": "error", "error": str(exc)}

    # --- server side ------------------------------------------------------------------------

    def register_exports(self, instance_uuid: str, text: str) -> dict:
        try:
            rendered = self._rendered(text)
        except ExportsError as exc:
            raise ChannelRefused(str(exc), "bad-exports") from exc
        self._caller(instance_uuid)
        self.store.update(instance_uuid, lambda state: _with_exports(state, text))
        LOG.info("instance %s exports %s", instance_uuid, "; ".join(rendered) or "nothing")
        return {"ok": True, "exports": rendered}

    @staticmethod
    def _rendered(text: str) -> list[str]:
        return [export.render() for export in parse_exports(text)]

    # --- client side ------------------------------------------------------------------------

    def attach(self, instance_uuid: str, request: dict, peer_pid: int) -> dict:
        client = self._caller(instance_uuid)
        server_ip, path, target = (str(request.get(key, "")) for key in ("server", "path", "target"))
        source_address = str(request.get("source_address", ""))
        if source_address not in client.fixed_ips:
            raise ChannelRefused(f"{source_address or 'no address'} is not an address of instance "
                                 f"{instance_uuid} ({', '.join(client.fixed_ips) or 'none'})", "denied")
        server = self.store.find_by_fixed_ip(server_ip)
        if server is None:
            raise ChannelRefused(f"no VM of this hypervisor has the address {server_ip}", "no-server")
        exports = parse_exports(server.exports_text)
        access = find_access(exports, path, (source_address,), _hostnames(client))
        if access is None:
            reason = "denied" if is_exported(exports, path) else "no-export"
            raise ChannelRefused(f"{server_ip}:{path} is not exported to {source_address} ({client.hostname})",
                                 reason)
        read_only = access.read_only or bool(request.get("read_only"))
        self._attach_tree(server, path, access.export_path, client, self._namespace_pid(client, peer_pid), target,
                          read_only)
        self.store.update(instance_uuid, lambda state: state.with_share(
            ShareMount(server.uuid, path, target, read_only)))
        LOG.info("attached %s:%s (instance %s) at %s in instance %s%s", server_ip, path, server.uuid, target,
                 instance_uuid, " read-only" if read_only else "")
        return {"ok": True, "read_only": read_only, "export": access.export_path}

    def _attach_tree(self, server: InstanceState, path: str, export_path: str, client: InstanceState,
                     client_pid: int, target: str, read_only: bool) -> None:
        server_pid = self._running_pid(server)
        args = ["attach", str(server_pid), path, str(client_pid), target, "--within", export_path]
        args += ["--read-only"] if read_only else []
        done = self._helper(args, f"attach {path} of instance {server.uuid} at {target} of {client.uuid}")
        if done.returncode == mountns.EXIT_SOURCE_MISSING:
            raise ChannelRefused(f"{path} does not exist on instance {server.uuid}", "no-export")
        if done.returncode == mountns.EXIT_OUTSIDE_EXPORT:
            raise ChannelRefused(f"{path} on instance {server.uuid} leads outside its export {export_path}",
                                 "denied")
        if done.returncode == mountns.EXIT_TARGET_MISSING:
            raise ChannelRefused(f"mount point {target} does not exist", "target")
        if done.returncode != 0:
            raise HypervisorError(f"attach {path} of instance {server.uuid} at {target} of {client.uuid}: "
                                  f"{' '.join(done.stderr.split())}")

    def _namespace_pid(self, client: InstanceState, peer_pid: int) -> int:
        """The caller's own process if it lives in the VM's PID namespace (its mount namespace is the
        one that asked), else the VM's PID 1."""
        init_pid = self._running_pid(client)
        try:
            if os.readlink(f"/proc/{peer_pid}/ns/pid") == os.readlink(f"/proc/{init_pid}/ns/pid"):
                return peer_pid
        except OSError:
            pass
        return init_pid

    def _running_pid(self, instance: InstanceState) -> int:
        container = self.docker.inspect(instance.container)
        if container is None or not container.running:
            raise ChannelRefused(f"instance {instance.uuid} is not running", "no-server")
        return container.pid

    def _caller(self, instance_uuid: str) -> InstanceState:
        state = self.store.load(instance_uuid)
        if state is None:
            raise HypervisorError(f"instance {instance_uuid} has no state file")
        return state

    def _helper(self, args: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            return mountns.run_helper(args, self.helper_timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise HypervisorError(f"{what}: timed out after {self.helper_timeout_s:g} s") from exc

    # --- a server going away ------------------------------------------------------------------

    def detach_served_by(self, server_uuid: str) -> None:
        """Detach the trees of SERVER_UUID from every client (as a stale NFS mount, they are gone)."""
        for client in self.store.all():
            shares = [share for share in client.share_mounts if share.server_uuid == server_uuid]
            if not shares:
                continue
            container = self.docker.inspect(client.container)
            for share in shares if container is not None and container.running else ():
                done = self._helper(["detach", str(container.pid), share.target],
                                    f"detach {share.target} of {client.uuid}")
                if done.returncode != 0:
                    LOG.warning("detach %s of %s: %s", share.target, client.uuid, done.stderr.strip())
            self.store.update(client.uuid, lambda state: state.without_shares_from(server_uuid))


def _with_exports(state: InstanceState, text: str) -> InstanceState:
    return replace(state, exports_text=text)


def _hostnames(instance: InstanceState) -> tuple[str, ...]:
    short = instance.hostname.split(".", 1)[0]
    return tuple(dict.fromkeys((instance.hostname, short)))
