"""Which private address `astrostack ssh/exec --host` goes to, from the stack's outputs."""

from __future__ import annotations

import pytest

from astrostack.cluster.access import (
    NFS_ADDRESS_OUTPUT,
    WORKER_ADDRESSES_OUTPUT,
    ClusterAccessError,
    private_address,
    worker_addresses,
)
from astrostack.errors import InvalidInput

OUTPUTS = {NFS_ADDRESS_OUTPUT: "10.0.0.5", WORKER_ADDRESSES_OUTPUT: ["10.0.0.11", None, "10.0.0.13"]}


def test_worker_n_is_the_nth_address_and_an_unknown_one_is_empty():
    assert worker_addresses(OUTPUTS) == ["10.0.0.11", "", "10.0.0.13"]
    assert worker_addresses({}) == []
    assert private_address("c", OUTPUTS, "worker-2") == "10.0.0.13"
    assert private_address("c", OUTPUTS, "nfs") == "10.0.0.5"


@pytest.mark.parametrize("host", ["worker-3", "worker-x", "worker-"])
def test_a_host_the_stack_does_not_have_is_named_in_the_error(host):
    with pytest.raises(InvalidInput, match=f"cluster c has no host '{host}' \\(workers: worker-0..worker-2\\)"):
        private_address("c", OUTPUTS, host)


@pytest.mark.parametrize("host,outputs", [("worker-1", OUTPUTS), ("nfs", {})])
def test_a_host_whose_address_is_not_known_yet_cannot_be_reached_yet(host, outputs):
    with pytest.raises(ClusterAccessError, match=f"does not know {host}'s address yet"):
        private_address("c", outputs, host)
