"""The local cloud is a real OpenStack: a Heat stack of what a cluster host needs, created and deleted.

Through the `astrostack-local` cloud (the test session's user and project, real Keystone
auth, trusts, stack-domain users), a stack with Net/Subnet/Router/
RouterInterface/SecurityGroup/Port/FloatingIP/Volume/VolumeAttachment/Server
and a WaitCondition reaches CREATE_COMPLETE; its delete leaves every count
where it was. The server signals the wait condition itself when it really
boots (the container driver); the test signals it too, so the test also holds
with the fake compute driver, where no VM runs.

Environment: ASTROSTACK_TEST_TIMEOUT bounds each wait (default 180 s).
"""

from __future__ import annotations

import os
import shlex
import time
import uuid
from pathlib import Path

import pytest
import requests

openstack = pytest.importorskip("openstack")

from conftest import cloud_counts  # noqa: E402

pytestmark = pytest.mark.functional
TEMPLATE = Path(__file__).parent / "templates" / "local_openstack.yaml"
POLL_S = 2.0


def _timeout() -> float:
    return float(os.environ.get("ASTROSTACK_TEST_TIMEOUT", "180"))


def counts(user, admin) -> dict[str, int]:
    """What a stack creates and its delete must remove (conftest's count, keypairs aside:
    this stack makes none)."""
    found = cloud_counts(user, admin)
    found.pop("keypairs")
    return found


def wait_for(what: str, ready, timeout: float):
    """Poll ``ready()`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(POLL_S)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def stack_status(user, stack_id: str) -> str:
    return user.orchestration.get_stack(stack_id).status


def settled(user, stack_id: str) -> str | None:
    """The stack's status once it no longer ends in IN_PROGRESS (a rollback passes through FAILED)."""
    status = stack_status(user, stack_id)
    return None if status.endswith("IN_PROGRESS") else status


def curl_cli(user, stack) -> str | None:
    """The wait condition handle's signal command, once Heat can resolve it."""
    answer = user.orchestration.get(f"/stacks/{stack.name}/{stack.id}/outputs/curl_cli")
    if answer.status_code != 200:
        return None
    return (answer.json().get("output") or {}).get("output_value") or None


def signal_handle(command: str) -> None:
    """Do what the handle's curl_cli does, with the body a booted server sends."""
    words = shlex.split(command)
    url = next(word for word in words if word.startswith("http"))
    headers = dict(words[i + 1].split(": ", 1) for i, word in enumerate(words) if word == "-H")
    body = {"status": "SUCCESS", "id": "test", "data": "signalled by the test"}
    answer = requests.post(url, headers=headers, json=body, timeout=30)
    assert answer.status_code < 300, answer.text


def failure_reason(user, stack_id: str) -> str:
    stack = user.orchestration.get_stack(stack_id)
    failed = [f"{r.name}: {r.status_reason}" for r in user.orchestration.resources(stack_id)
              if r.status.endswith("FAILED")]
    return f"{stack.status} ({stack.status_reason}); " + "; ".join(failed)


def test_stack_with_server_volume_floating_ip_and_wait_condition(clouds):
    user, admin = clouds
    timeout = _timeout()
    before = counts(user, admin)
    name = f"t-local-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    stack = user.orchestration.create_stack(name=name, template=TEMPLATE.read_text(), timeout_mins=15,
                                            disable_rollback=True)
    try:
        command = wait_for("the wait condition handle's curl_cli", lambda: curl_cli(user, stack), timeout)
        signal_handle(command)
        status = wait_for("the stack to settle", lambda: settled(user, stack.id), timeout)
        assert status == "CREATE_COMPLETE", failure_reason(user, stack.id)
        created_s = time.monotonic() - started
        server = next(user.compute.servers(name=f"{name}-server"), None) or next(iter(user.compute.servers()))
        assert server.status == "ACTIVE"
        attachments = list(user.compute.volume_attachments(server))
        assert len(attachments) == 1
        outputs = {o["output_key"]: o["output_value"] for o in user.orchestration.get_stack(stack.id).outputs}
        assert outputs["floating_ip"].startswith("172.24.4.") or os.environ.get("ASTROSTACK_LOCAL_EXTERNAL_CIDR")
    finally:
        deleted_at = time.monotonic()
        user.orchestration.delete_stack(stack.id)
        wait_for("the stack's delete", lambda: user.orchestration.find_stack(stack.id) is None
                 or stack_status(user, stack.id) in ("DELETE_COMPLETE", "DELETE_FAILED"), timeout)
    deleted_s = time.monotonic() - deleted_at
    assert stack_status_or_gone(user, stack.id) in (None, "DELETE_COMPLETE"), failure_reason(user, stack.id)
    after = wait_for("every count back where it was", lambda: _same(before, counts(user, admin)), 60)
    assert after == before
    print(f"\nstack create {created_s:.0f} s, delete {deleted_s:.0f} s; counts {before}")


def stack_status_or_gone(user, stack_id: str) -> str | None:
    stack = user.orchestration.find_stack(stack_id)
    return None if stack is None else stack.status


def _same(before: dict[str, int], now: dict[str, int]) -> dict[str, int] | None:
    return now if now == before else None


def test_the_start_check_from_the_vms_side_names_a_port_a_firewall_rule_rejects(local_cloud, monkeypatch):
    """`local start` connects to the APIs from the VMs' side of the external bridge: each
    answers; a port a REJECT rule stops fails the check, naming it and the rule to look at."""
    import socket
    import subprocess

    from astrostack.errors import LocalCloudError
    from astrostack.local import external_net, layout

    assert external_net.unreachable_from_vm_side(layout.vm_facing_ports()) == {}
    gateway = layout.external_net().gateway
    with socket.create_server((gateway, 0)) as listener:
        port = listener.getsockname()[1]
        assert external_net.unreachable_from_vm_side({"spare": port}) == {}
        monkeypatch.setattr(layout, "vm_facing_ports", lambda: {"spare": port})
        rule = ["INPUT", "-i", external_net.bridge_name(), "-p", "tcp", "--dport", str(port), "-j", "REJECT"]
        subprocess.run(["iptables", "-w", "10", "-I", *rule], check=True)
        try:
            with pytest.raises(LocalCloudError) as failed:
                external_net.check_vm_side(say=print)
        finally:
            subprocess.run(["iptables", "-w", "10", "-D", *rule], check=True)
    assert f"spare ({port}: Connection refused)" in str(failed.value) and "iptables -S INPUT" in failed.value.hint
    assert not Path("/run/netns", external_net.VM_SIDE_NAMESPACE).exists()
