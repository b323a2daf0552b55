"""The wait loop, on a simulated clock: nothing here really sleeps."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from astrostack.errors import AstrostackError, CloudError, CloudUnreachable, WaitTimeout
from astrostack.monitor import (
    Deadlines,
    MonitorError,
    Observation,
    PhaseEvent,
    PhaseFailed,
    PhaseTimeout,
    PollPolicy,
    ScriptedProbe,
    SimulatedClock,
    Targets,
    wait_until_ready,
)
from astrostack.progress import JsonLinesPrinter, ProgressPrinter
from astrostack.spec import ClusterSpec

RESOURCES = 40
TARGETS = Targets(hosts=3, nodes=12)
DEADLINES = Deadlines(stack=900, hosts=900, nodes=600, total=2400)
POLICY = PollPolicy(minimum=1.0, factor=1.5, maximum=10.0)

# When each phase's last condition becomes true in HAPPY.
STACK_DONE_AT, HOSTS_DONE_AT, NODES_DONE_AT = 30.0, 61.0, 85.0
HAPPY = [
    (0, dict(stack_status="CREATE_IN_PROGRESS", resources_total=RESOURCES, last_event="stack created")),
    (10, dict(resources_done=20, last_event="server manager CREATE_COMPLETE")),
    (STACK_DONE_AT, dict(resources_done=RESOURCES)),
    (50, dict(hosts_signalled=1, last_event="manager signalled SUCCESS")),
    (60, dict(hosts_signalled=3)),
    (HOSTS_DONE_AT, dict(stack_status="CREATE_COMPLETE")),
    (80, dict(nodes_ready=12)),
    (NODES_DONE_AT, dict(smoke_ok=True, last_event="smoke test passed")),
]


def make_probe(timeline, requests_per_poll=3, poll_cost=0.0):
    clock = SimulatedClock()
    return clock, ScriptedProbe(clock, timeline, requests_per_poll=requests_per_poll, poll_cost=poll_cost)


def wait(clock, probe, *, deadlines=DEADLINES, events=None, poll=POLICY):
    return wait_until_ready(probe, TARGETS, deadlines, clock=clock, sleep=clock.sleep,
                            on_event=events.append if events is not None else None, poll=poll)


def happy_until(at, **changes):
    """HAPPY up to ``at``, then ``changes``."""
    return [step for step in HAPPY if step[0] < at] + [(at, changes)]


# Success --------------------------------------------------------------------


def test_success_records_each_phase_within_one_poll_of_its_completion():
    clock, probe = make_probe(HAPPY)

    readiness = wait(clock, probe)

    phases = readiness.phases
    assert list(phases) == ["stack", "hosts", "nodes"]
    assert all(timing.outcome == "done" for timing in phases.values())
    for timing, done_at in zip(phases.values(), (STACK_DONE_AT, HOSTS_DONE_AT, NODES_DONE_AT)):
        assert done_at <= timing.finished <= done_at + POLICY.maximum
    assert phases["hosts"].started == phases["stack"].finished
    assert phases["nodes"].started == phases["hosts"].finished
    assert readiness.elapsed == phases["nodes"].finished == clock.now
    assert readiness.observation.smoke_ok is True
    assert sum(clock.sleeps) == pytest.approx(clock.now)  # all time passed in injected sleeps


def test_detection_latency_is_at_most_the_interval_in_effect():
    """The last change is seen by the first poll after it, never later."""
    clock, probe = make_probe(HAPPY)

    wait(clock, probe)

    poll_times = [at for at, _phase in probe.calls]
    for done_at in (STACK_DONE_AT, HOSTS_DONE_AT, NODES_DONE_AT):
        before = max(at for at in poll_times if at < done_at)
        seen = min(at for at in poll_times if at >= done_at)
        assert seen - done_at <= seen - before <= POLICY.maximum


def test_deadlines_from_spec():
    spec = ClusterSpec(name="demo", ssh={"allowed_cidr": "172.24.4.1/32"}, timeouts={"stack_create": 300, "hosts_ready": 400, "nodes_ready": 120})

    assert Deadlines.from_spec(spec) == Deadlines(stack=300, hosts=400, nodes=120, total=820)


# Terminal states: raised at once ---------------------------------------------


def test_failure_signal_fails_within_one_poll_not_at_the_deadline():
    failed_at = 55.0
    clock, probe = make_probe(happy_until(
        failed_at, host_failures=[("worker-1", "cloud-init: apt-get install docker.io failed")]))

    with pytest.raises(PhaseFailed) as caught:
        wait(clock, probe)

    error = caught.value
    assert error.phase == "hosts"
    assert failed_at <= clock.now <= failed_at + POLICY.maximum
    assert clock.now < STACK_DONE_AT + DEADLINES.hosts
    assert "hosts phase failed" in error.message
    assert "worker-1 failed: cloud-init: apt-get install docker.io failed" in error.message
    assert error.observation.host_failures == [("worker-1", "cloud-init: apt-get install docker.io failed")]
    assert error.phases["hosts"].outcome == "failed"
    assert isinstance(error, MonitorError) and isinstance(error, AstrostackError)


@pytest.mark.parametrize("status", ["CREATE_FAILED", "ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE",
                                    "DELETE_IN_PROGRESS"])
def test_any_stack_status_off_the_create_path_is_terminal(status):
    clock, probe = make_probe(happy_until(20, stack_status=status, stack_reason="Resource CREATE failed: quota"))

    with pytest.raises(PhaseFailed) as caught:
        wait(clock, probe)

    assert caught.value.phase == "stack"
    assert f"stack is {status}: Resource CREATE failed: quota" in caught.value.message
    assert clock.now <= 20 + POLICY.maximum


def test_rollback_that_passes_create_failed_between_two_polls_is_still_caught():
    """CREATE_FAILED lasts well under a second; the poll only ever sees ROLLBACK_*."""
    timeline = happy_until(20.0, stack_status="CREATE_FAILED", stack_reason="timed out")
    timeline += [(20.3, dict(stack_status="ROLLBACK_IN_PROGRESS")), (25, dict(stack_status="ROLLBACK_COMPLETE"))]
    clock, probe = make_probe(timeline)

    with pytest.raises(PhaseFailed) as caught:
        wait(clock, probe)

    assert "CREATE_FAILED" not in {probe.state_at(at).stack_status for at, _ in probe.calls}
    assert caught.value.observation.stack_status.startswith("ROLLBACK_")


@pytest.mark.parametrize("at, changes, phase, expected", [
    (15, dict(servers_in_error=[("worker-2", "No valid host was found")]), "stack",
     "server worker-2 is in ERROR: No valid host was found"),
    (15, dict(failed_resources=[("nfs_volume", "VolumeSizeExceedsAvailableQuota")]), "stack",
     "resource nfs_volume failed: VolumeSizeExceedsAvailableQuota"),
    (82, dict(nodes_failure="task astro.3 rejected: No such image: astrostack/mpi-base"), "nodes",
     "node failure: task astro.3 rejected: No such image: astrostack/mpi-base"),
])
def test_failed_servers_resources_and_nodes_are_terminal(at, changes, phase, expected):
    clock, probe = make_probe(happy_until(at, **changes))

    with pytest.raises(PhaseFailed) as caught:
        wait(clock, probe)

    assert caught.value.phase == phase
    assert expected in caught.value.message
    assert clock.now <= at + POLICY.maximum


def test_every_failure_is_named_the_most_specific_first():
    clock, probe = make_probe(happy_until(
        40, stack_status="CREATE_FAILED", stack_reason="WaitCondition failed",
        host_failures=[("worker-0", "disk full")], servers_in_error=[("worker-1", "ERROR")]))

    with pytest.raises(PhaseFailed) as caught:
        wait(clock, probe)

    message = caught.value.message
    assert message.index("worker-0 failed") < message.index("and 2 more")
    assert message.index("server worker-1") < message.index("stack is CREATE_FAILED")


class UnreachableProbe:
    """The cloud answers nothing from ``down_from`` to ``down_until`` (seconds); otherwise PROBE answers."""

    def __init__(self, clock, probe=None, down_from=0.0, down_until=float("inf"), error=None):
        self.clock, self.probe = clock, probe
        self.down_from, self.down_until = down_from, down_until
        self.error = error or CloudUnreachable("GET http://heat/v1/admin/stacks/demo: no answer after 5 attempts")
        self.failed_polls = 0

    def observe(self, phase, *, time_left=None):
        if self.down_from <= self.clock() < self.down_until:
            self.failed_polls += 1
            raise self.error
        return self.probe.observe(phase, time_left=time_left)


def test_an_outage_shorter_than_the_phase_deadline_is_ridden_out_and_said():
    clock, probe = make_probe(HAPPY)
    events: list[PhaseEvent] = []
    outage = UnreachableProbe(clock, probe, down_from=5, down_until=35)

    readiness = wait_until_ready(outage, TARGETS, DEADLINES, clock=clock, sleep=clock.sleep, on_event=events.append)

    assert readiness.observation.smoke_ok is True
    assert outage.failed_polls >= 2
    said = [event.message for event in events if event.kind == "progress"]
    assert any("the cloud does not answer" in m and "retrying until the" in m for m in said)
    assert any("answers again" in m for m in said)


def test_an_outage_past_the_deadline_times_out_naming_the_outage():
    clock = SimulatedClock()
    deadlines = Deadlines(stack=120, hosts=300, nodes=600, total=2400)

    with pytest.raises(PhaseTimeout) as caught:
        wait_until_ready(UnreachableProbe(clock), TARGETS, deadlines, clock=clock, sleep=clock.sleep)

    assert caught.value.phase == "stack"
    assert 120 <= clock.now <= 121
    assert "the cloud has not answered for" in caught.value.message
    assert "no answer after 5 attempts" in caught.value.message


def test_an_error_answer_of_the_cloud_fails_the_phase_at_once():
    clock = SimulatedClock()
    refused = UnreachableProbe(clock, error=CloudError("GET http://heat/v1/x: HTTP 403 Forbidden"))

    with pytest.raises(PhaseFailed) as caught:
        wait_until_ready(refused, TARGETS, DEADLINES, clock=clock, sleep=clock.sleep)

    assert "cannot observe the cloud" in caught.value.message and "403" in caught.value.message
    assert clock.sleeps == []


def test_a_cluster_that_cannot_be_looked_at_fails_the_phase_not_the_program():
    clock = SimulatedClock()
    broken = UnreachableProbe(clock, error=AstrostackError("ssh to debian@172.24.4.20 failed: Permission denied"))

    with pytest.raises(PhaseFailed) as caught:
        wait_until_ready(broken, TARGETS, DEADLINES, clock=clock, sleep=clock.sleep)

    assert "cannot observe the cluster" in caught.value.message


# Deadlines ------------------------------------------------------------------


def test_phase_timeout_is_honoured_to_within_one_poll_and_names_the_counts():
    deadlines = Deadlines(stack=900, hosts=300, nodes=600, total=2400)
    clock, probe = make_probe(happy_until(60, hosts_signalled=2), poll_cost=0.4)

    with pytest.raises(PhaseTimeout) as caught:
        wait(clock, probe, deadlines=deadlines)

    error = caught.value
    hosts = error.phases["hosts"]
    assert error.phase == "hosts"
    assert 300 <= clock.now - hosts.started <= 300 + 0.4  # the last poll starts at the deadline
    assert probe.calls[-1][0] == pytest.approx(hosts.started + 300)
    assert error.message == "hosts phase timed out after 300 s: 2/3 hosts signalled, stack CREATE_IN_PROGRESS"
    assert "timeouts.hosts_ready" in error.hint
    assert isinstance(error, WaitTimeout)
    assert hosts.outcome == "timeout"


def test_total_deadline_cuts_a_phase_short():
    deadlines = Deadlines(stack=900, hosts=900, nodes=600, total=100)
    clock, probe = make_probe(happy_until(60, hosts_signalled=2))

    with pytest.raises(PhaseTimeout) as caught:
        wait(clock, probe, deadlines=deadlines)

    assert caught.value.phase == "hosts"
    assert clock.now == pytest.approx(100)
    assert caught.value.message.startswith("hosts phase stopped at the total deadline (100 s): 2/3 hosts")


def test_no_sleep_goes_past_the_deadline():
    deadlines = Deadlines(stack=17, hosts=900, nodes=600, total=2400)
    clock, probe = make_probe([(0, dict(stack_status="CREATE_IN_PROGRESS", resources_total=5))])

    with pytest.raises(PhaseTimeout):
        wait(clock, probe, deadlines=deadlines)

    assert clock.now == pytest.approx(17)
    assert clock.sleeps[-1] < POLICY.maximum  # the last sleep was cut to the deadline


def test_every_poll_is_told_how_long_its_phase_may_still_take():
    deadlines = Deadlines(stack=900, hosts=300, nodes=600, total=2400)
    clock, probe = make_probe(happy_until(60, hosts_signalled=2), poll_cost=0.4)
    seen = []
    observe = probe.observe

    def observe_and_note(phase, *, time_left=None):
        seen.append((clock.now, phase, time_left))
        return observe(phase, time_left=time_left)

    probe.observe = observe_and_note
    with pytest.raises(PhaseTimeout) as caught:
        wait(clock, probe, deadlines=deadlines)

    hosts_started = caught.value.phases["hosts"].started
    hosts_polls = [(now, left) for now, phase, left in seen if phase == "hosts"]
    assert all(now + left == pytest.approx(hosts_started + 300) for now, left in hosts_polls)
    assert hosts_polls[-1][1] == pytest.approx(0)


# Poll interval and cost -----------------------------------------------------


def test_interval_grows_while_idle_and_resets_when_a_count_changes():
    timeline = [(0, dict(stack_status="CREATE_IN_PROGRESS", resources_total=10)),
                (40, dict(resources_done=1)),
                (41, dict(resources_done=10))]
    clock, probe = make_probe(timeline)

    with pytest.raises(PhaseTimeout):
        wait(clock, probe, deadlines=Deadlines(stack=900, hosts=1, nodes=1, total=2400))

    idle = [1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0, 10.0]
    assert clock.sleeps[:len(idle)] == pytest.approx(idle)
    assert sum(idle[:-1]) < 40 <= sum(idle)  # the poll after 40 s sees resources_done=1 ...
    assert clock.sleeps[len(idle)] == 1.0  # ... and the interval drops back to the minimum
    assert probe.calls[len(idle) + 1][0] == pytest.approx(sum(idle) + 1.0)


def test_requests_per_cycle_are_counted_per_phase():
    clock, probe = make_probe(HAPPY, requests_per_poll={"stack": 3, "hosts": 3, "nodes": 2})

    readiness = wait(clock, probe)

    phases = readiness.phases
    assert readiness.polls == len(probe.calls)
    assert phases["stack"].requests == 3 * phases["stack"].polls
    assert phases["hosts"].requests == 3 * phases["hosts"].polls
    assert phases["nodes"].requests == 2 * phases["nodes"].polls
    assert readiness.requests == sum(timing.requests for timing in phases.values())
    assert [phase for _, phase in probe.calls] == (
        ["stack"] * phases["stack"].polls + ["hosts"] * phases["hosts"].polls + ["nodes"] * phases["nodes"].polls)


# Events ---------------------------------------------------------------------


def test_event_stream_starts_progresses_and_finishes_each_phase_in_order():
    clock, probe = make_probe(HAPPY)
    events: list[PhaseEvent] = []

    wait(clock, probe, events=events)

    milestones = [(event.phase, event.kind) for event in events if event.kind != "progress"]
    assert milestones == [("stack", "start"), ("stack", "done"), ("hosts", "start"), ("hosts", "done"),
                          ("nodes", "start"), ("nodes", "done")]
    progress = [(event.resources_done, event.hosts_signalled, event.nodes_ready)
                for event in events if event.kind == "progress"]
    assert progress == sorted(progress)  # counts only grow
    assert progress[-1] == (RESOURCES, 3, 12)
    assert [event.elapsed for event in events] == sorted(event.elapsed for event in events)
    nodes_start = next(event for event in events if event.phase == "nodes" and event.kind == "start")
    assert events[-1].phase_elapsed == pytest.approx(events[-1].elapsed - nodes_start.elapsed)
    done = [event for event in events if event.kind == "done"]
    assert done[-1].message == "nodes ready: 12/12 nodes ready, smoke test passed"


def test_failure_is_the_last_event_and_serialises_to_one_json_line():
    clock, probe = make_probe(happy_until(55, host_failures=[("worker-1", "disk full")]))
    stream = io.StringIO()
    events: list[PhaseEvent] = []

    def both(event):
        events.append(event)
        JsonLinesPrinter(stream)(event)

    with pytest.raises(PhaseFailed):
        wait_until_ready(probe, TARGETS, DEADLINES, clock=clock, sleep=clock.sleep, on_event=both)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == len(events)
    assert lines[-1]["event"] == "failed" and lines[-1]["phase"] == "hosts"
    assert lines[-1]["hosts"] == {"signalled": 1, "target": 3}
    assert "worker-1 failed: disk full" in lines[-1]["message"]


# Progress line ----------------------------------------------------------------


def test_progress_printer_renders_counts_phase_times_and_the_last_event():
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    clock = SimulatedClock()
    printer = ProgressPrinter(console=console, clock=clock)
    probe = ScriptedProbe(clock, HAPPY)
    events: list[PhaseEvent] = []

    wait_until_ready(probe, TARGETS, DEADLINES, clock=clock, sleep=clock.sleep, on_event=events.append)
    hosts_progress = [e for e in events if e.phase == "hosts" and e.kind == "progress"][0]
    for event in events[: events.index(hosts_progress) + 1]:
        printer(event)
    clock.advance(4)

    stack_seconds = events[events.index(hosts_progress) - 2].phase_elapsed
    hosts_seconds = hosts_progress.phase_elapsed + 4
    assert printer.status_line().plain == (
        f"resources {RESOURCES}/{RESOURCES} · hosts 1/3 · nodes 0/12 · "
        f"stack {stack_seconds:.0f}s hosts {hosts_seconds:.0f}s · manager signalled SUCCESS")
    assert console.file.getvalue().splitlines() == [
        f"✓ stack done in {stack_seconds:.0f} s: stack ready: {RESOURCES}/{RESOURCES} Heat resources done, "
        "stack CREATE_IN_PROGRESS"]


def test_bad_poll_policy_is_refused():
    with pytest.raises(ValueError):
        PollPolicy(minimum=5, maximum=1)


def test_observation_defaults_mean_nothing_seen_yet():
    assert Observation().stack_status is None and Observation().smoke_ok is None
