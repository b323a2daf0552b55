"""Sockets in other network namespaces, from one multi-threaded process.

setns(CLONE_NEWNET) changes the namespace of the calling thread only, and a
socket keeps the namespace it was created in, so a thread can step into a
namespace, make a socket, and step back; the socket then serves from any
thread. Python 3.11 has no ``os.setns``: ctypes calls libc's.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """Entering or leaving a network namespace failed."""


def namespace_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def namespace_inode(name: str) -> int | None:
    """Identity of a named namespace (a re-created one has another inode); None if absent."""
    try:
        return os.stat(namespace_path(name)).st_ino
    except FileNotFoundError:
        return None


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NamespaceError(errno, f"setns into {what}: {os.strerror(errno)}")


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body in namespace ``name`` (this thread only); None = stay where we are."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(namespace_path(name), os.O_RDONLY)
        try:
            _setns(target, name)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own, "the agent's own namespace")
    finally:
        os.close(own)


def connect(address: tuple[str, int], timeout: float, namespace: str | None = None) -> socket.socket:
    """A TCP connection made from inside ``namespace``."""
    with entered(namespace):
        return socket.create_connection(address, timeout=timeout)


def listening_socket(address: tuple[str, int], namespace: str | None = None, backlog: int = 64) -> socket.socket:
    """A TCP socket listening inside ``namespace``."""
    with entered(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        return sock
