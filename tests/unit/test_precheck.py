"""Pre-checks that need no cloud: what no VM could reach."""

from __future__ import annotations

import pytest

from astrostack.precheck import unreachable_from_a_vm


@pytest.mark.parametrize("url, reachable", [
    ("http://172.24.4.1:18004/v1/abc", True),
    ("https://heat.kasi.example:8004/v1/abc", True),
    ("http://[2001:db8::1]:8004/v1", True),
    ("http://localhost:8004/v1/abc", False),
    ("http://127.0.0.1:8004/v1/abc", False),
    ("http://[::1]:8004/v1", False),
    ("http://0.0.0.0:8004/v1", False),
])
def test_a_heat_endpoint_on_loopback_is_one_no_vm_can_signal(url, reachable):
    assert (unreachable_from_a_vm(url) is None) is reachable
