"""Reading Heat's answers: what counts as done, failed, signalled."""

from __future__ import annotations

from astrostack.stack import count_resources, decoded_signal_data, failed_resources, scrub, signal_counts


def _r(name, status, reason=""):
    return {"resource_name": name, "resource_status": status, "resource_status_reason": reason}


def test_resources_not_started_are_not_done():
    resources = [_r("network", "CREATE_COMPLETE"), _r("manager", "INIT_COMPLETE"),
                 _r("old", "DELETE_COMPLETE"), _r("hosts_wait", "CREATE_IN_PROGRESS")]
    assert count_resources(resources) == (1, 3)


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
