"""Attach a directory tree of one VM at a path of another VM: the kernel part of the NFS substitute.

``open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`` in the server's mount namespace
gives a detached copy of the exported tree (the same files, not a copy of
them); ``move_mount`` in the client's mount namespace attaches it at the
mount point. ``setns`` into a mount namespace refuses a multi-threaded
process, and nova-compute has threads, so this runs as its own process:

    python -m astrostack_localcloud.nova.mountns attach SOURCE_PID SOURCE TARGET_PID TARGET --within EXPORT [--read-only]
    python -m astrostack_localcloud.nova.mountns detach TARGET_PID TARGET

SOURCE is resolved (symbolic links followed) in the server's namespace and
must stay inside EXPORT, as mountd checks the real path it would serve.
Exit status: 0 done, 3 the source is missing, 4 the target is missing,
5 the source leaves the export, 1 any other failure (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import subprocess
import sys
from collections.abc import Sequence

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
CLONE_NEWNS = 0x00020000
MNT_DETACH = 0x2
EXIT_SOURCE_MISSING, EXIT_TARGET_MISSING, EXIT_OUTSIDE_EXPORT = 3, 4, 5

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class MountNsError(OSError):
    """A step failed; ``exit_code`` says which kind of failure it was."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def _check(result: int, what: str, missing_code: int = 1) -> int:
    if result < 0:
        err = ctypes.get_errno()
        code = missing_code if err in (errno.ENOENT, errno.ENOTDIR) else 1
        raise MountNsError(f"{what}: {os.strerror(err)}", code)
    return result


def open_namespace(pid: int) -> int:
    try:
        return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise MountNsError(f"mount namespace of pid {pid}: {exc.strerror}") from exc


def enter(namespace_fd: int, pid: int) -> None:
    _check(_libc.setns(namespace_fd, CLONE_NEWNS), f"enter the mount namespace of pid {pid}")


def clone_tree(path: str, read_only: bool) -> int:
    """A detached recursive copy of the mount tree at PATH (in the current namespace)."""
    fd = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(),
                              OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE),
                f"open_tree {path}", EXIT_SOURCE_MISSING)
    if read_only:
        attr = MountAttr(attr_set=MOUNT_ATTR_RDONLY)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr),
                             ctypes.sizeof(attr)), f"make the copy of {path} read-only")
    return fd


def move_tree(tree_fd: int, target: str) -> None:
    if not os.path.isdir(target):
        raise MountNsError(f"mount point {target} does not exist", EXIT_TARGET_MISSING)
    _check(_libc.syscall(SYS_MOVE_MOUNT, tree_fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH),
           f"move_mount to {target}", EXIT_TARGET_MISSING)


def resolve_within(source: str, export: str) -> str:
    """SOURCE's real path, if it is EXPORT's real path or below it (a symlink must not lead out)."""
    real_source, real_export = os.path.realpath(source), os.path.realpath(export)
    if not os.path.exists(real_source):
        raise MountNsError(f"{source} does not exist", EXIT_SOURCE_MISSING)
    if os.path.commonpath([real_source, real_export]) != real_export:
        raise MountNsError(f"{source} is {real_source}, outside the export {export}", EXIT_OUTSIDE_EXPORT)
    return real_source


def attach(source_pid: int, source: str, target_pid: int, target: str, read_only: bool, within: str) -> None:
    # Both namespace files first: once inside a VM, this machine's /proc is not visible.
    source_ns, target_ns = open_namespace(source_pid), open_namespace(target_pid)
    enter(source_ns, source_pid)
    tree = clone_tree(resolve_within(source, within), read_only)
    enter(target_ns, target_pid)
    move_tree(tree, target)


def detach(target_pid: int, target: str) -> None:
    enter(open_namespace(target_pid), target_pid)
    result = _libc.umount2(target.encode(), MNT_DETACH)
    if result < 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(result, f"unmount {target}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="astrostack_localcloud.nova.mountns")
    commands = parser.add_subparsers(dest="command", required=True)
    attach_cmd = commands.add_parser("attach")
    attach_cmd.add_argument("source_pid", type=int)
    attach_cmd.add_argument("source")
    attach_cmd.add_argument("target_pid", type=int)
    attach_cmd.add_argument("target")
    attach_cmd.add_argument("--within", required=True)
    attach_cmd.add_argument("--read-only", action="store_true")
    detach_cmd = commands.add_parser("detach")
    detach_cmd.add_argument("target_pid", type=int)
    detach_cmd.add_argument("target")
    args = parser.parse_args(argv)
    try:
        if args.command == "attach":
            attach(args.source_pid, args.source, args.target_pid, args.target, args.read_only, args.within)
        else:
            detach(args.target_pid, args.target)
    except MountNsError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    return 0


# --- the caller's side (in nova-compute) ------------------------------------------------------


def run_helper(args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run this module as its own process with ARGS; its stderr explains a failure."""
    return subprocess.run([sys.executable, "-m", "astrostack_localcloud.nova.mountns", *args],
                          capture_output=True, text=True, timeout=timeout_s)


if __name__ == "__main__":
    sys.exit(main())
