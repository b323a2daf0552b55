"""What the deployment probe reads from a host's console."""

from __future__ import annotations

from pathlib import Path

from astrostack.probe import SIGNAL_UNREACHABLE_MARKER, DeploymentProbe, SignalTrouble, signal_unreachable

COMMON_SH = Path(__file__).resolve().parents[2] / "cloud_init" / "scripts" / "common.sh"


def test_the_host_script_prints_the_marker_the_probe_looks_for():
    assert f'print(f"{SIGNAL_UNREACHABLE_MARKER} attempt={{attempt}} {{where}} {{exc}}"' in COMMON_SH.read_text()


def test_a_console_with_the_marker_says_how_far_which_url_and_why():
    console = ("[   12.3] cloud-init[411]: signal attempt 3/30 to http://heat.example:8004/v1/x: timed out\n"
               f"[   12.3] cloud-init[411]: {SIGNAL_UNREACHABLE_MARKER} attempt=3 http://heat.example:8004/v1/x "
               "<urlopen error timed out>\n"
               f"[   19.3] cloud-init[411]: {SIGNAL_UNREACHABLE_MARKER} attempt=4 http://heat.example:8004/v1/x "
               "<urlopen error [Errno 111] Connection refused>\n")

    trouble = signal_unreachable(console)

    assert trouble is not None and trouble.attempt == 4
    assert "http://heat.example:8004/v1/x" in trouble.why and "Connection refused" in trouble.why
    assert "route to Heat's API" in trouble.why


class Watch:
    """A ServerWatch whose consoles say what the test sets."""

    def __init__(self):
        self.troubles = {}

    def dead_servers(self):
        return []

    def cannot_signal(self, hosts):
        return {host: t for host, t in self.troubles.items() if host in hosts}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_only_a_host_that_goes_on_failing_while_heat_answers_is_cut_off():
    clock, watch = Clock(), Watch()
    probe = DeploymentProbe(heat=None, ref=None, servers=watch, clock=clock)
    look = probe._silent_because_cut_off

    def at(seconds, attempt):
        clock.now = seconds
        watch.troubles = {"worker-1": SignalTrouble(attempt, "cannot reach")}
        return look("hosts", ["worker-1"])

    assert at(0, 3) == []                     # the first look only starts the clock
    for second in range(3, 30, 3):            # polls every 3 s: astrostack reaches Heat
        assert at(second, 3) == []
    assert at(30, 4) == []                    # first console look: a baseline
    for second in range(33, 60, 3):
        assert at(second, 5) == []
    assert at(60, 6) == [("worker-1", "cannot reach")]  # still failing 30 s later


def test_an_outage_of_heat_itself_is_not_taken_for_a_cut_off_host():
    clock, watch = Clock(), Watch()
    probe = DeploymentProbe(heat=None, ref=None, servers=watch, clock=clock)

    for second, attempt in ((0, 3), (30, 4), (60, 9)):  # astrostack saw no Heat in between
        clock.now = second
        watch.troubles = {"worker-1": SignalTrouble(attempt, "cannot reach")}
        assert probe._silent_because_cut_off("hosts", ["worker-1"]) == []


def test_a_console_without_the_marker_says_nothing():
    assert signal_unreachable("cloud-init: signalled SUCCESS: manager ready\n") is None
