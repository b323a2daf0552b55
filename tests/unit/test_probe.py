"""What the deployment probe reads from a host's console."""

from __future__ import annotations

from pathlib import Path

import pytest

from astrostack.cluster import swarm
from astrostack.cluster.probe import SMOKE_MARGIN_S, SMOKE_MIN_S, smoke_timeout
from astrostack.lifecycle import silent_hosts_said
from astrostack.monitor import HOSTS, NODES, Observation, PhaseTimeout
from astrostack.probe import (
    SIGNAL_UNREACHABLE_MARKER,
    DeploymentProbe,
    SignalTrouble,
    no_user_data,
    signal_unreachable,
    silent_host_story,
)
from astrostack.spec import spec_from_dict

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


# The last lines of a real console (the local cloud, metadata service too slow).
NO_DATASOURCE_CONSOLE = """\
[28810.633879] cloud-init[114]: 2026-12-01 19:47:14,243 - url_helper.py[ERROR]: Timed out, no response from urls: ['http://169.254.169.254/openstack']
[28838.752147] cloud-init[255]: Cloud-init v. 22.4.2 finished at Tue, 01 Dec 2026 19:47:42 +0000. Datasource DataSourceNone.  Up 28838.71 seconds
[28838.752288] cloud-init[255]: 2026-12-01 19:47:42,351 - cc_final_message.py[WARNING]: Used fallback datasource
"""


def test_a_host_that_booted_without_user_data_fails_at_the_first_console_look():
    clock, watch = Clock(), Watch()
    probe = DeploymentProbe(heat=None, ref=None, servers=watch, clock=clock)
    watch.troubles = {"manager": no_user_data(NO_DATASOURCE_CONSOLE)}

    for second in range(0, 30, 3):  # polls every 3 s; the first starts the clock
        clock.now = second
        assert probe._silent_because_cut_off("hosts", ["manager"]) == []
    clock.now = 30  # the first console look: no need to see it twice
    [(host, why)] = probe._silent_because_cut_off("hosts", ["manager"])

    assert host == "manager" and "metadata service" in why and "DataSourceNone" in why
    assert no_user_data("Cloud-init v. 22.4.2 finished at ... Datasource DataSourceOpenStack [net,ver=2].") is None


def test_a_console_without_the_marker_says_nothing():
    assert signal_unreachable("cloud-init: signalled SUCCESS: manager ready\n") is None


def cluster(**changes):
    data = {"name": "c1", "cloud": "local", "hosts": 10, "nodes": 200,
            "servers": {"image": "debian-12", "manager": {"flavor": "m1.small"}, "worker": {"flavor": "m1.small"}},
            "ssh": {"allowed_cidr": "172.24.4.1/32"}, "network": {"external": "public"},
            "overlay": {"subnet": "10.0.8.0/22"}}
    return spec_from_dict({**data, **changes})


def test_a_smoke_test_never_runs_past_the_nodes_deadline():
    spec = cluster()
    assert smoke_timeout(spec) == 120 + 200  # its own allowance: mpirun's start-up grows with the ranks
    assert smoke_timeout(spec, time_left=100) == pytest.approx(100 - SMOKE_MARGIN_S)
    assert smoke_timeout(spec, time_left=1000) == smoke_timeout(spec)
    assert smoke_timeout(spec, time_left=3) == SMOKE_MIN_S  # a last try, not none


@pytest.mark.parametrize("mode, cidr", [("swarm", "10.0.8.0/22"), ("mpi", "10.77.0.0/24")])
def test_waiting_ranks_yield_only_when_asked(mode, cidr):
    spec = cluster(mode=mode, network={"external": "public", "cidr": "10.77.0.0/24"})

    plain = swarm.mpirun_argv(spec, ["/usr/local/bin/mpi_smoke"])
    yielding = swarm.mpirun_argv(spec, ["/usr/local/bin/mpi_smoke"], yield_when_idle=True)

    assert "mpi_yield_when_idle" not in plain
    assert yielding[yielding.index("mpi_yield_when_idle") + 1] == "1"
    assert yielding[-1] == "/usr/local/bin/mpi_smoke" and yielding.count(cidr) == 2
    assert yielding[yielding.index("-np") + 1] == "200"


def test_a_server_still_being_built_has_an_empty_console_not_an_error():
    from openstack.exceptions import NotFoundException

    from astrostack.probe import console_so_far

    class Compute:
        def get_server_console_output(self, server, length):
            raise NotFoundException("404: Guest does not have a console available.")

    class Conn:
        compute = Compute()

    assert console_so_far(Conn(), "server", 80) == ""


NEVER_SIGNALLED_CONSOLE = (
    "[    3.1] cloud-init[201]: Cloud-init v. 22.4.2 running 'modules:final' at Thu, 03 Dec 2026 17:40:01 +0000.\n"
    "[    3.4] cloud-init[201]: astrostack[worker/worker-0] 17:40:02 docker is up\n"
    "[    3.5] cloud-init[201]: astrostack[worker/worker-0] 17:40:02 fault injection: never-signal\n"
    "[    3.9] cloud-init[201]: Cloud-init v. 22.4.2 finished at Thu, 03 Dec 2026 17:40:03 +0000. "
    "Datasource DataSourceOpenStackLocal [net,ver=2].  Up 3.90 seconds\n")


def test_a_silent_host_story_is_what_its_scripts_last_said_and_whether_cloud_init_ended():
    story = silent_host_story(NEVER_SIGNALLED_CONSOLE)

    assert story == "its scripts last said 'fault injection: never-signal', then cloud-init finished"


def test_a_silent_host_story_while_its_scripts_still_run_does_not_say_cloud_init_finished():
    console = NEVER_SIGNALLED_CONSOLE.replace("fault injection: never-signal", "pulling the image")
    console = console.rsplit("[    3.9]", 1)[0]

    assert silent_host_story(console) == "its scripts last said 'pulling the image'"


@pytest.mark.parametrize("console, says", [
    (None, "no server in Nova"),
    ("", "an empty console"),
    ("\x1b[0;32m  OK  \x1b[0m] Reached target Network.\n[   2.0] dhclient: No DHCPOFFERS received.\n",
     "its console ends '[   2.0] dhclient: No DHCPOFFERS received.' (astrostack's scripts had not started)"),
    (NO_DATASOURCE_CONSOLE, "DataSourceNone"),
])
def test_a_silent_host_story_names_the_known_troubles_and_else_the_last_line(console, says):
    assert says in silent_host_story(console)


def test_a_long_last_line_is_clipped():
    story = silent_host_story("x" * 1000)

    assert len(story) < 250 and story.count("x") < 200 and "..." in story


def _hosts_timeout(missing, failures=()):
    observation = Observation(hosts_signalled=1, hosts_missing=list(missing), host_failures=list(failures))
    return PhaseTimeout("hosts phase timed out after 60 s: 1/3 hosts signalled", phase=HOSTS, observation=observation)


def test_the_silent_hosts_consoles_are_told_after_a_hosts_timeout(tmp_path):
    (tmp_path / "c1-worker-0.log").write_text(NEVER_SIGNALLED_CONSOLE)

    said = silent_hosts_said("c1", _hosts_timeout(["worker-0", "worker-1"]), tmp_path)

    assert said == ("; worker-0: its scripts last said 'fault injection: never-signal', then cloud-init finished"
                    "; worker-1: no server in Nova (Heat had not created it yet)")


def test_at_most_three_silent_hosts_are_told_and_the_rest_counted(tmp_path):
    said = silent_hosts_said("c1", _hosts_timeout([f"worker-{i}" for i in range(7)]), tmp_path)

    assert said.count("no server in Nova") == 3 and said.endswith("(and 4 more silent)")


def test_a_host_only_heat_timed_out_is_silent_and_told_one_that_signalled_failure_is_not(tmp_path):
    (tmp_path / "c1-worker-0.log").write_text(NEVER_SIGNALLED_CONSOLE)
    failures = [("worker-0", "WaitConditionTimeout: resources.wait: 0 of 1 received"),
                ("worker-1", "WaitConditionFailure: resources.wait: worker-1: pulling the image failed")]

    said = silent_hosts_said("c1", _hosts_timeout(["worker-0", "worker-1"], failures), tmp_path)

    assert said == "; worker-0: its scripts last said 'fault injection: never-signal', then cloud-init finished"


def test_nothing_more_is_said_when_a_host_said_why_or_outside_the_hosts_phase_or_without_consoles(tmp_path):
    failed = _hosts_timeout(["worker-0"], failures=[("worker-0", "WaitConditionFailure: cloud-init-fail")])
    nodes = PhaseTimeout("nodes phase timed out", phase=NODES, observation=Observation(hosts_missing=["worker-0"]))

    assert silent_hosts_said("c1", failed, tmp_path) == ""
    assert silent_hosts_said("c1", nodes, tmp_path) == ""
    assert silent_hosts_said("c1", _hosts_timeout(["worker-0"]), tmp_path / "none") == ""
