"""Reading Heat's answers: what counts as done, failed, signalled."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import openstack.connection
import pytest

from astrostack.errors import CloudError, CloudUnreachable
from astrostack.stack import (
    WAIT_CONDITION,
    Heat,
    count_resources,
    decoded_signal_data,
    failed_resources,
    host_waits,
    scrub,
    signal_counts,
)


def _r(name, status, reason="", rtype="OS::Nova::Server", parent=None):
    resource = {"resource_name": name, "resource_status": status, "resource_status_reason": reason,
                "resource_type": rtype}
    if parent is not None:
        resource["parent_resource"] = parent
    return resource


def _wait(name, status, parent=None, reason=""):
    return _r(name, status, reason, WAIT_CONDITION, parent)


def test_resources_not_started_are_not_done_and_wait_conditions_are_not_counted():
    resources = [_r("network", "CREATE_COMPLETE"), _r("manager", "INIT_COMPLETE"),
                 _r("old", "DELETE_COMPLETE"), _wait("manager_wait", "CREATE_IN_PROGRESS"),
                 _wait("wait", "CREATE_IN_PROGRESS", parent="0")]
    assert count_resources(resources) == (1, 3)


def test_nested_stacks_complete_with_their_children_and_are_not_counted():
    group = {**_r("workers", "CREATE_IN_PROGRESS", rtype="OS::Heat::ResourceGroup"),
             "links": [{"rel": "self", "href": "x"}, {"rel": "nested", "href": "y"}]}
    member = {**_r("0", "CREATE_IN_PROGRESS", rtype="Astrostack::Worker", parent="workers"),
              "links": [{"rel": "nested", "href": "z"}]}
    resources = [group, member, _r("server", "CREATE_COMPLETE", parent="0"),
                 _wait("wait", "CREATE_IN_PROGRESS", parent="0")]
    assert count_resources(resources) == (1, 1)


def test_each_host_is_read_from_its_own_wait_condition():
    resources = [_wait("manager_wait", "CREATE_COMPLETE"), _wait("wait", "CREATE_COMPLETE", parent="0"),
                 _wait("wait", "CREATE_FAILED", parent="1", reason="WaitConditionFailure: disk full"),
                 _wait("wait", "CREATE_IN_PROGRESS", parent="2"), _wait("wait", "DELETE_COMPLETE", parent="3"),
                 _wait("nfs_wait", "CREATE_FAILED", reason="no volume"), _r("wait", "CREATE_COMPLETE", parent="4")]

    waits = host_waits(resources)

    assert waits.signalled == ["manager", "worker-0"]
    assert waits.failed == [("worker-1", "WaitConditionFailure: disk full")]
    assert waits.pending == ["worker-2"]
    assert waits.nfs_failed == [("nfs", "no volume")]


def test_failed_resources_carry_their_reason():
    resources = [_r("subnet", "CREATE_FAILED", "overlaps astrotest-net"), _r("network", "CREATE_COMPLETE")]
    assert failed_resources(resources) == [("subnet", "overlaps astrotest-net")]


def test_signals_count_success_and_name_failures():
    signals = {"manager": {"status": "SUCCESS"}, "worker-0": {"status": "FAILURE", "reason": "line 3"},
               "worker-1": {"status": "SUCCESS"}}
    assert signal_counts(signals) == (2, [("worker-0", "line 3")])


def test_evidence_keeps_status_reason_and_decoded_data():
    signals = {"worker-0": {"status": "FAILURE", "reason": "mount failed", "data": '{"role": "worker"}'}}
    decoded = decoded_signal_data(signals)
    assert decoded["worker-0"]["status"] == "FAILURE"
    assert decoded["worker-0"]["reason"] == "mount failed"
    assert decoded["worker-0"]["data"] == {"role": "worker"}


def test_scrub_hides_secret_looking_keys_at_any_depth():
    data = {"stack": {"parameters": {"token": "abc", "cluster_name": "x"}, "outputs": [{"private_key": "k"}]}}
    assert scrub(data) == {"stack": {"parameters": {"token": "<hidden>", "cluster_name": "x"},
                                     "outputs": [{"private_key": "<hidden>"}]}}


# --- waiting for a delete ---------------------------------------------------------------

class ScriptedHeat:
    """Heat's answers to `find` and `status` over (fake) time: STATUSES[i] at poll i."""

    def __init__(self, statuses):
        from astrostack.stack import Heat, StackRef

        self.ref = StackRef("c", "id-1")
        self.statuses = list(statuses)
        self.now = 0.0
        self.heat = Heat.__new__(Heat)
        self.heat.sleep = self.advance
        self.heat.find = lambda name: self.ref if self.statuses else None
        self.heat.status = lambda ref: (self.statuses.pop(0), "")

    def advance(self, seconds):
        self.now += seconds

    def clock(self):
        return self.now


def test_a_stack_that_settles_in_another_status_is_not_being_deleted():
    import pytest

    from astrostack.stack import DeleteFailed

    scripted = ScriptedHeat(["UPDATE_IN_PROGRESS"] * 3 + ["ROLLBACK_COMPLETE"] * 20)

    with pytest.raises(DeleteFailed, match="ROLLBACK_COMPLETE, not being deleted"):
        scripted.heat.wait_gone(scripted.ref, 300, clock=scripted.clock)
    assert scripted.now < 20


def test_the_old_status_for_a_moment_after_the_request_is_still_a_delete_under_way():
    scripted = ScriptedHeat(["CREATE_COMPLETE", "CREATE_COMPLETE", "DELETE_IN_PROGRESS", "DELETE_IN_PROGRESS"])

    scripted.heat.wait_gone(scripted.ref, 300, clock=scripted.clock)  # gone after the 4th poll

    assert scripted.statuses == []


# Signing in happens on a Heat client's first request: its failures are ours too -----------

def _connection(auth_url: str):
    return openstack.connection.Connection(
        auth_url=auth_url, username="demo", password="not-a-secret", project_name="demo",
        user_domain_name="Default", project_domain_name="Default", api_timeout=5)


def test_a_keystone_that_does_not_answer_is_a_one_line_cloud_unreachable_naming_its_url():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        auth_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v3"
    with pytest.raises(CloudUnreachable) as caught:
        Heat(_connection(auth_url), sleep=lambda s: None).list_stacks()
    message = str(caught.value)
    assert message.startswith("Heat GET /stacks: ") and auth_url in message and "\n" not in message
    assert "no answer after 5 attempts" in message


def test_a_keystone_that_refuses_the_credentials_is_a_cloud_error_at_once():
    asked: list[str] = []

    class Keystone(http.server.BaseHTTPRequestHandler):
        """Keystone's version document, and 401 for every sign-in."""

        def _answer(self, status: int, document: dict):
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            url = f"http://127.0.0.1:{self.server.server_address[1]}/v3/"
            self._answer(200, {"version": {"id": "v3.14", "status": "stable",
                                           "links": [{"rel": "self", "href": url}]}})

        def do_POST(self):  # noqa: N802
            asked.append(f"POST {self.path}")
            self._answer(401, {"error": {"code": 401, "title": "Unauthorized",
                                         "message": "The request you have made requires authentication."}})

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keystone)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        with pytest.raises(CloudError) as caught:
            Heat(_connection(f"http://127.0.0.1:{httpd.server_address[1]}/v3"), sleep=lambda s: None).list_stacks()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not isinstance(caught.value, CloudUnreachable)
    assert str(caught.value).startswith("Heat GET /stacks: ") and "\n" not in str(caught.value)
    assert sum(1 for request in asked if request.startswith("POST")) == 1  # a refusal is not retried
