"""Cinder volumes as block devices of a VM: the volume's file on a loop device, its node in the guest.

The Cinder driver's connection_info is ``{'driver_volume_type': 'astrostack_file',
'data': {'device_path': <file>, 'volume_id': <id>}}``. The hypervisor puts the
file on a loop device, then, inside the guest's /dev (a container has no udev,
so the hypervisor also does udev's part): the node at Nova's mountpoint
(``/dev/vdb``), ``/dev/disk/by-id/virtio-<id[:20]>`` as KVM's virtio serial
shows, and ``by-uuid``/``by-label`` links when the volume already holds a
file system (a restarted VM mounts its fstab entries by UUID).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import replace

from .commands import run
from .errors import HypervisorError
from .state import AttachedVolume

CONNECTION_TYPE = "astrostack_file"
VIRTIO_SERIAL_CHARS = 20
GUEST_NODE = re.compile(r"^/dev/[a-z]+[0-9]*$")


def volume_from_connection_info(connection_info: dict, mountpoint: str) -> AttachedVolume:
    """The volume a Cinder connection_info describes, to be seen at MOUNTPOINT."""
    if connection_info.get("driver_volume_type") != CONNECTION_TYPE:
        raise HypervisorError(f"volume connection type {connection_info.get('driver_volume_type')!r} is not "
                              f"supported (only {CONNECTION_TYPE})")
    data = connection_info.get("data") or {}
    if not data.get("device_path") or not data.get("volume_id"):
        raise HypervisorError(f"volume connection_info lacks device_path or volume_id: {sorted(data)}")
    return AttachedVolume(volume_id=data["volume_id"], device_path=data["device_path"],
                          mountpoint=guest_node(mountpoint))


def guest_node(mountpoint: str) -> str:
    """Nova's mountpoint as a guest device node (``vdb`` and ``/dev/vdb`` both give ``/dev/vdb``)."""
    node = mountpoint if mountpoint.startswith("/dev/") else f"/dev/{mountpoint}"
    if not GUEST_NODE.match(node):
        raise HypervisorError(f"mountpoint {mountpoint!r} is not a device name such as /dev/vdb")
    return node


def by_id_link(volume_id: str) -> str:
    """Where the guest finds the volume by id: KVM's virtio serial is the id's first 20 characters."""
    return f"/dev/disk/by-id/virtio-{volume_id[:VIRTIO_SERIAL_CHARS]}"


def guest_links(volume: AttachedVolume, filesystem: dict[str, str]) -> list[str]:
    """The /dev/disk symlinks udev would make for VOLUME (FILESYSTEM: blkid's UUID and LABEL)."""
    links = [by_id_link(volume.volume_id)]
    if filesystem.get("UUID"):
        links.append(f"/dev/disk/by-uuid/{filesystem['UUID']}")
    if filesystem.get("LABEL") and "/" not in filesystem["LABEL"]:
        links.append(f"/dev/disk/by-label/{filesystem['LABEL']}")
    return links


def install_script(node: str, major: int, minor: int, links: list[str]) -> str:
    """Shell run in the guest's mount namespace: the block node and its links."""
    lines = [f"rm -f {shlex.quote(node)}", f"mknod -m 0660 {shlex.quote(node)} b {major} {minor}",
             f"chgrp disk {shlex.quote(node)} 2>/dev/null || true"]
    for link in links:
        lines += [f"mkdir -p {shlex.quote(os.path.dirname(link))}", f"ln -sfn {shlex.quote(node)} {shlex.quote(link)}"]
    return "\n".join(lines)


def removal_script(node: str, links: list[str]) -> str:
    """Shell run in the guest's mount namespace: the node and every link to it gone."""
    lines = [f"rm -f {shlex.quote(node)}"]
    lines += [f"rm -f {shlex.quote(link)}" for link in links]
    lines.append(f"find /dev/disk -lname {shlex.quote(node)} -delete 2>/dev/null || true")
    return "\n".join(lines)


def parse_losetup_j(output: str) -> list[str]:
    """Loop devices in ``losetup -j FILE`` output (``/dev/loop3: [2049]:1234 (/path)``)."""
    return [line.split(":", 1)[0] for line in output.splitlines() if line.startswith("/dev/loop")]


def parse_blkid_export(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


class Volumes:
    """Loop devices and guest nodes (every command bounded by TIMEOUT_S)."""

    def __init__(self, timeout_s: float = 30.0):
        self.timeout_s = timeout_s

    def loops_of(self, path: str) -> list[str]:
        done = run(["losetup", "-j", path], what=f"find loop devices of {path}", timeout_s=self.timeout_s)
        return parse_losetup_j(done.stdout)

    def attach_loop(self, volume: AttachedVolume) -> AttachedVolume:
        """VOLUME on a loop device (the one it already has, if any)."""
        if not os.path.isfile(volume.device_path):
            raise HypervisorError(f"volume {volume.volume_id}: its file {volume.device_path} does not exist")
        existing = self.loops_of(volume.device_path)
        if existing:
            return replace(volume, loop_device=existing[0])
        done = run(["losetup", "--find", "--show", volume.device_path],
                   what=f"put volume {volume.volume_id} on a loop device", timeout_s=self.timeout_s)
        return replace(volume, loop_device=done.stdout.strip())

    def detach_loops(self, volume: AttachedVolume) -> None:
        """Free every loop device of VOLUME's file (a busy one goes when its last user lets go)."""
        loops = set(self.loops_of(volume.device_path)) if os.path.exists(volume.device_path) else set()
        if volume.loop_device:
            loops.add(volume.loop_device)
        for loop in sorted(loops):
            run(["losetup", "-d", loop], what=f"free {loop} of volume {volume.volume_id}",
                timeout_s=self.timeout_s, check=False)

    def filesystem(self, volume: AttachedVolume) -> dict[str, str]:
        done = run(["blkid", "-o", "export", volume.loop_device], what=f"probe volume {volume.volume_id}",
                   timeout_s=self.timeout_s, check=False)
        return parse_blkid_export(done.stdout) if done.returncode == 0 else {}

    def install_in_guest(self, volume: AttachedVolume, guest_pid: int) -> None:
        rdev = os.stat(volume.loop_device).st_rdev
        script = install_script(volume.mountpoint, os.major(rdev), os.minor(rdev),
                                guest_links(volume, self.filesystem(volume)))
        self._in_guest(guest_pid, script, f"give the VM (pid {guest_pid}) volume {volume.volume_id} "
                                          f"as {volume.mountpoint}")

    def remove_from_guest(self, volume: AttachedVolume, guest_pid: int) -> None:
        script = removal_script(volume.mountpoint, [by_id_link(volume.volume_id)])
        self._in_guest(guest_pid, script, f"take volume {volume.volume_id} from the VM (pid {guest_pid})")

    def _in_guest(self, guest_pid: int, script: str, what: str) -> None:
        run(["nsenter", "--target", str(guest_pid), "--all", "--", "/bin/sh", "-ec", script], what=what,
            timeout_s=self.timeout_s)
