"""One exception tree for the hypervisor; every message is one line naming the object."""

from __future__ import annotations


class HypervisorError(RuntimeError):
    """A hypervisor operation failed (one line: what, on which instance or device, why)."""


class CommandFailed(HypervisorError):
    """A host command (ip, losetup, ...) exited non-zero or timed out."""


class Missing(HypervisorError):
    """The container, volume or image is not there."""


class ImageUnavailable(HypervisorError):
    """The VM image could not be downloaded or loaded."""


class PortNotWired(HypervisorError):
    """The network agent did not wire a port before the deadline."""


class ChannelRefused(HypervisorError):
    """A hypervisor-channel request was refused; ``reason`` is what the guest's tool reports."""

    def __init__(self, message: str, reason: str = "refused"):
        super().__init__(message)
        self.reason = reason
