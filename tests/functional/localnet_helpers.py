"""Helpers of the network agent's functional tests: an ICMP echo from inside a namespace
(no ping binary needed), so the tests need only what the local cloud installs, and the
dhclient script of their test VMs."""

from __future__ import annotations

import os
import select
import socket
import struct
import time

from astrostack_localcloud.net import netns

DHCLIENT_SCRIPT = """#!/bin/sh
# What dhclient-script would do, minus /etc/resolv.conf: address, MTU, default route; and a record.
NS=$(ip netns identify)
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    env | grep -E '^(new_|reason=|interface=)' | sort > "@DIR@/$NS.lease"
    ip -4 addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
    [ -n "$new_interface_mtu" ] && ip link set "$interface" mtu "$new_interface_mtu"
    for router in $new_routers; do ip route replace default via "$router" dev "$interface"; break; done
    ;;
esac
exit 0
"""


ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_echo(namespace: str, address: str, timeout: float = 1.0, source: str | None = None,
              device: str = "eth0") -> bool:
    """One echo request from inside NAMESPACE; True if the reply came back before TIMEOUT."""
    version = 6 if ":" in address else 4
    family, protocol = ((socket.AF_INET6, socket.IPPROTO_ICMPV6) if version == 6
                        else (socket.AF_INET, socket.IPPROTO_ICMP))
    with netns.entered(namespace):
        sock = socket.socket(family, socket.SOCK_RAW, protocol)
        scope = socket.if_nametoindex(device) if version == 6 and address.startswith("fe80") else 0
    ident = os.getpid() & 0xFFFF
    payload = b"t3-localnet" + struct.pack("!d", time.monotonic())
    header = struct.pack("!BBHHH", ECHO_REQUEST[version], 0, 0, ident, 1)
    if version == 4:      # the kernel computes ICMPv6 checksums itself
        header = struct.pack("!BBHHH", ECHO_REQUEST[version], 0, _checksum(header + payload), ident, 1)
    try:
        if source:
            sock.bind((source, 0))
        sock.sendto(header + payload, (address, 0, 0, scope) if version == 6 else (address, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                return False
            packet, _ = sock.recvfrom(2048)
            icmp = packet[(packet[0] & 0x0F) * 4:] if version == 4 else packet
            kind, _, _, reply_id, _ = struct.unpack("!BBHHH", icmp[:8])
            if kind == ECHO_REPLY[version] and reply_id == ident and icmp[8:] == payload:
                return True
        return False
    finally:
        sock.close()
