"""A cluster's life on the real local OpenStack, through the same code path as
on KASI: up (pre-checks against real quotas, Heat with Keystone trusts, Nova
servers that are container-VMs running the real cloud-init from the metadata
service, a real Swarm and Open MPI), exec, status, scale, down; and every way a
deployment fails, each followed by a count, through the APIs, of everything a
cluster creates.

Outcomes are read from the OpenStack APIs (Heat, Nova, Neutron, Cinder,
Keystone), from the state store and from the `astrostack` command's exit code
and stderr. Phase timeouts come from ASTROSTACK_TEST_TIMEOUT (conftest
``phase_timeout()``). Tests marked ``exclusive`` run when no other test does
(scripts/functional.sh).
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import CUTOFF_COMMENT, cloud_counts

from astrostack import cloud, lifecycle, marks, state
from astrostack.cli.main import main
from astrostack.cluster.access import host_access
from astrostack.stack import Heat

pytestmark = pytest.mark.functional


# --- helpers -------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``astrostack ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def up_cli(capsys, spec_path: str, *extra: str) -> tuple[int, str, str, float]:
    """``astrostack up SPEC`` through the CLI: (exit code, stdout, stderr, seconds)."""
    started = time.monotonic()
    code, out, err = run_cli(capsys, "up", spec_path, *extra)
    return code, out, err, time.monotonic() - started


def one_error(stderr: str) -> str:
    """The single `error:` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def heat() -> Heat:
    return Heat(cloud.connect("local"))


def marked(user, name: str) -> list[str]:
    """Everything in the cloud that carries the cluster's mark (what a sweep would find)."""
    from astrostack.cleanup import OpenStackSweeper, sweep

    return [f"{i.kind} {i.name}" for i in sweep(OpenStackSweeper(user), name, dry_run=True).found]


def assert_nothing_left(clouds, name: str, before: dict[str, int]) -> None:
    """The cloud holds what it held before the cluster: no stack, nothing with its mark,
    every count (servers, ports, floating IPs, volumes, security groups, keypairs,
    stacks, trusts, stack-domain users) as it was."""
    user, admin = clouds
    assert heat().find(name) is None
    assert marked(user, name) == []
    assert cloud_counts(user, admin) == before


def assert_rolled_back(clouds, name: str, before: dict[str, int]) -> state.ClusterRecord:
    record = state.load(name)
    assert record.status == "rolled_back"
    assert record.stack_id is None
    assert_nothing_left(clouds, name, before)
    return record


def astrostack_process(*argv: str, **popen) -> subprocess.Popen:
    """``astrostack ARGV`` as a process of its own (the console script's code path), with
    Ctrl-C's default action even when the tests run in the background (a shell starts
    background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    return subprocess.Popen([sys.executable, "-m", "astrostack.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def wait_for_event(process: subprocess.Popen, *, phase: str, kind: str, timeout: float) -> dict:
    """Read `up --json` events until PHASE's KIND event (or fail at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if not ready:
            continue
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"`up` ended (exit {process.wait()}) before the {phase} phase: {process.stderr.read()}")
        event = json.loads(line)
        if (event.get("phase"), event.get("event")) == (phase, kind):
            return event
    raise AssertionError(f"no {phase} {kind} event within {timeout:.0f} s")


def peak_rss_while(process: subprocess.Popen) -> int:
    """The highest resident memory (bytes) of PROCESS until it ends."""
    peak = 0
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
            peak = max(peak, rss)
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
        time.sleep(0.2)
    return peak


# --- 1. success, then everything a ready cluster is used for ---------------------------------


def test_up_exec_status_degraded_unrecorded_down(clouds, make_spec, cluster_cleanup, capsys, tmp_path):
    """3 hosts, 12 nodes through the real cloud; MPI spans 12 ranks; exec streams 1 GB in
    little memory; a dead host makes status degraded; a lost record hides nothing; down
    leaves every count as it was."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-ok", "10.81.0.0/24")
    cluster_cleanup(spec.name)

    record = lifecycle.up(spec)

    assert record.status == "ready"
    assert (record.hosts_ready, record.nodes_ready) == (spec.hosts, spec.nodes) == (3, 12)
    assert {phase: entry.outcome for phase, entry in record.phases.items()} == \
        {"stack": "done", "hosts": "done", "nodes": "done"}
    assert record.manager_address and record.manager_address.startswith("172.24.4.")
    assert record.image_digests, "the application image's digest in the registry is recorded"
    user, _ = clouds
    servers = {s.name: s for s in user.compute.servers(details=True) if s.name.startswith(spec.name)}
    assert sorted(servers) == [f"{spec.name}-{h}" for h in ("manager", "nfs", "worker-0", "worker-1")]
    assert {s.status for s in servers.values()} == {"ACTIVE"}

    code, out, err = run_cli(capsys, "exec", spec.name, "--mpi", "--", "/usr/local/bin/mpi_smoke")
    assert code == 0, (out[-2000:], err)
    smoke = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert smoke["size"] == 12
    assert len(set(smoke["hosts"])) == 12

    # 1 GB through exec: streamed, so the astrostack process stays small.
    out_file = tmp_path / "big.out"
    with open(out_file, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "astrostack.cli.main", "exec", spec.name, "--",
                                    "head", "-c", str(2**30), "/dev/zero"], stdout=sink, stderr=subprocess.PIPE)
        peak = peak_rss_while(process)
    assert process.returncode == 0, process.stderr.read()
    assert out_file.stat().st_size == 2**30
    assert peak < 200 * 2**20, f"exec held {peak / 2**20:.0f} MiB"

    code, out, err = run_cli(capsys, "status", spec.name, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["status"], report["stack_status"], report["live"]["healthy"]) == ("ready", "CREATE_COMPLETE", True)
    assert all(entry["seconds"] is not None for entry in report["phases"].values())

    # A host whose Docker engine dies: status says so (exit 6) and names what is missing.
    host_access(spec.name, "worker-1").run("systemctl kill --signal=KILL docker.service docker.socket; "
                                           "systemctl mask --runtime docker.service", timeout=60)
    # Its tasks stop at once; the Swarm marks the node Down only when its heartbeats
    # have been missed, so status is read until it shows both.
    deadline = time.monotonic() + 120
    while True:
        code, out, err = run_cli(capsys, "status", spec.name, "--json")
        live = json.loads(out)["live"] if code == 6 else {}
        if live.get("hosts_ready") == 2 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert code == 6, (out, err)
    assert live["healthy"] is False and live["hosts_ready"] == 2, live

    # The record lost: list shows the cluster as unrecorded, down still removes all of it.
    state.state_path(spec.name).unlink()
    code, out, err = run_cli(capsys, "list", "--json")
    assert code == 0, err
    assert {"name": spec.name, "status": "unrecorded"}.items() <= \
        next(row for row in json.loads(out) if row["name"] == spec.name).items()

    code, _, err = run_cli(capsys, "down", spec.name, "--yes")
    assert code == 0, err
    assert_nothing_left(clouds, spec.name, before)


def test_mpi_mode_runs_a_job_across_host_containers(clouds, make_spec, cluster_cleanup, capsys):
    """mode: mpi: one MPI container per host on the host network, reached through the
    security group's own MPI ports; the image pushed into the cluster's own registry
    through the manager; a job spans every rank."""
    before = cloud_counts(*clouds)
    # No registry.url: the image goes into the cluster's own registry (Debian's unit on the NFS VM).
    spec = make_spec("ft-mpi", "10.92.0.0/24", mode="mpi", hosts=3, nodes=6, registry={"url": None})
    cluster_cleanup(spec.name)

    record = lifecycle.up(spec)

    assert record.status == "ready"
    assert any(ref.endswith(":5000/astrostack/mpi-base:latest") for ref in record.image_digests), record.image_digests
    code, out, err = run_cli(capsys, "exec", spec.name, "--mpi", "--", "/usr/local/bin/mpi_smoke")
    assert code == 0, (out[-2000:], err)
    smoke = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert smoke["size"] == 6 and len(set(smoke["hosts"])) == 3
    lifecycle.down(spec.name)
    assert_nothing_left(clouds, spec.name, before)


# --- 2. refused before anything is created ------------------------------------------------------


def test_a_quota_too_small_is_refused_before_anything_exists(clouds, make_spec, capsys, spec_file):
    user, admin = clouds
    before = cloud_counts(user, admin)
    spec = make_spec("ft-quota", "10.93.0.0/24")
    project = user.current_project_id
    quota = admin.compute.get_quota_set(project, usage=True)
    old = quota.instances
    # Room for 3 more servers than the project already runs (Nova refuses a limit below its usage).
    admin.compute.update_quota_set(project, instances=quota.usage["instances"] + 3)
    try:
        code, _, err, _ = up_cli(capsys, spec_file(spec))
    finally:
        admin.compute.update_quota_set(project, instances=old)

    assert code == 2, err
    line = one_error(err)
    assert "quota: instances needs 4" in line, line
    assert not state.exists(spec.name)
    assert cloud_counts(user, admin) == before


def test_a_restricted_application_credential_is_refused_with_what_to_do(clouds, make_spec, spec_file, capsys,
                                                                        tmp_path, monkeypatch):
    import yaml

    user, _ = clouds
    credential = user.identity.create_application_credential(user.current_user_id, name="ft-restricted",
                                                             unrestricted=False)
    try:
        auth = {"auth_url": user.config.get_auth_args()["auth_url"], "application_credential_id": credential.id,
                "application_credential_secret": credential.secret}
        config = {"clouds": {"ft-appcred": {"auth_type": "v3applicationcredential", "auth": auth,
                                            "region_name": "RegionOne", "identity_api_version": 3}}}
        path = tmp_path / "clouds.yaml"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
        spec = make_spec("ft-appcred", "10.94.0.0/24", cloud="ft-appcred")

        code, _, err, _ = up_cli(capsys, spec_file(spec))
    finally:
        user.identity.delete_application_credential(user.current_user_id, credential.id)

    assert code == 2, err
    line = one_error(err)
    assert "restricted" in line and "--unrestricted" in line, line
    assert not state.exists(spec.name)


# --- 3. failures: rolled back (or kept), evidence first -------------------------------------

# A cluster that fails while its hosts boot needs no more than a manager and a worker.
FAULT_SIZE = {"hosts": 2, "nodes": 2}


def test_cloud_init_failure_fails_fast_with_nova_console_evidence(clouds, make_spec, spec_file, cluster_cleanup,
                                                                 capsys):
    """worker-0's cloud-init fails: exit 3 long before the hosts deadline; the evidence
    holds its FAILURE signal and every server's console output from Nova; nothing left."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-cifail", "10.82.0.0/24", **FAULT_SIZE, faults=[{"host": "worker-0", "fault": "cloud-init-fail"}])
    cluster_cleanup(spec.name)

    code, _, err, elapsed = up_cli(capsys, spec_file(spec))

    assert code == 3, err
    line = one_error(err)
    assert "hosts phase failed" in line and "worker-0" in line and "fault injection: cloud-init-fail" in line, line
    record = assert_rolled_back(clouds, spec.name, before)
    hosts = record.phases["hosts"]
    assert hosts.outcome == "failed"
    assert (hosts.finished - hosts.started).total_seconds() < spec.timeouts.hosts_ready / 2
    assert elapsed < spec.timeouts.stack_create + spec.timeouts.hosts_ready / 2

    evidence = Path(record.evidence_dir)
    assert evidence.name in line
    summary = json.loads((evidence / "summary.json").read_text())
    assert (summary["cluster"], summary["phase"]) == (spec.name, "hosts")
    assert summary["last_seen"], summary  # the monitor's last look
    signals = json.loads((evidence / "host_signals.json").read_text())
    assert signals["worker-0"]["status"] == "FAILURE"
    assert "cloud-init-fail" in signals["worker-0"]["reason"]
    consoles = {path.stem: path.read_text() for path in (evidence / "consoles").glob("*.log")}
    assert sorted(consoles) == sorted(f"{spec.name}-{h}" for h in ("manager", "nfs", "worker-0"))
    assert "fault injection: cloud-init-fail" in consoles[f"{spec.name}-worker-0"]


def test_host_that_never_signals_times_out(clouds, make_spec, spec_file, cluster_cleanup, capsys):
    """worker-0 never signals: the hosts phase ends at its 60 s deadline (Heat's wait condition's
    or the monitor's) naming what its console last showed, exit 3, nothing left."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-nosignal", "10.83.0.0/24", **FAULT_SIZE, timeouts={"hosts_ready": 60},
                     faults=[{"host": "worker-0", "fault": "never-signal"}])
    cluster_cleanup(spec.name)

    code, _, err, elapsed = up_cli(capsys, spec_file(spec))

    assert code == 3, err
    line = one_error(err)
    assert "hosts phase" in line and "worker-0" in line, line
    # its console, read through Nova, says where it stopped
    assert "worker-0: its scripts last said 'fault injection: never-signal', then cloud-init finished" in line, line
    record = assert_rolled_back(clouds, spec.name, before)
    assert record.phases["hosts"].outcome in ("timeout", "failed")
    assert record.hosts_ready == 1
    assert elapsed < spec.timeouts.stack_create + spec.timeouts.hosts_ready + spec.timeouts.delete


def test_vm_that_powers_off_after_boot_is_a_dead_server(clouds, make_spec, spec_file, cluster_cleanup, capsys):
    """worker-0's VM powers itself off: Nova shows it SHUTOFF and the wait names it; rolled back."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-die", "10.84.0.0/24", **FAULT_SIZE, faults=[{"host": "worker-0", "fault": "die-after-boot"}])
    cluster_cleanup(spec.name)

    code, _, err, elapsed = up_cli(capsys, spec_file(spec))

    assert code == 3, err
    line = one_error(err)
    assert f"{spec.name}-worker-0" in line and "SHUTOFF" in line, line
    assert_rolled_back(clouds, spec.name, before)
    assert elapsed < spec.timeouts.stack_create + spec.timeouts.hosts_ready


@pytest.mark.exclusive  # every VM's way to Heat's signal URL is cut
def test_a_host_that_cannot_reach_heat_fails_the_wait_at_once_naming_the_url(clouds, make_spec, spec_file,
                                                                            cluster_cleanup, capsys):
    """The VMs cannot reach Heat's API (as with an internal-only endpoint): the silent hosts'
    consoles say so and the hosts phase ends on it, long before its deadline."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-cutoff", "10.98.0.0/24", **FAULT_SIZE, timeouts={"hosts_ready": 600})
    cluster_cleanup(spec.name)
    block = ["INPUT", "-i", "astro-ex", "-p", "tcp", "--dport", "18004", *CUTOFF_COMMENT, "-j", "REJECT"]
    subprocess.run(["iptables", "-I", *block], check=True)
    try:
        code, _, err, elapsed = up_cli(capsys, spec_file(spec))
    finally:
        subprocess.run(["iptables", "-D", *block], check=True)

    assert code == 3, err
    line = one_error(err)
    assert "cannot reach Heat's signal URL" in line and ":18004" in line, line
    assert elapsed < spec.timeouts.stack_create + 300
    assert_rolled_back(clouds, spec.name, before)


def test_keep_on_failure_keeps_then_down_force_cleans(clouds, make_spec, spec_file, cluster_cleanup, capsys):
    """--keep-on-failure: exit 4 with the cluster kept as it failed; `down --force` removes everything."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-keep", "10.85.0.0/24", **FAULT_SIZE, faults=[{"host": "nfs", "fault": "cloud-init-fail"}])
    cluster_cleanup(spec.name)

    code, _, err, _ = up_cli(capsys, spec_file(spec), "--keep-on-failure")

    assert code == 4, err
    assert "kept for debugging" in one_error(err)
    record = state.load(spec.name)
    assert record.status == "failed" and record.stack_id
    assert Path(record.evidence_dir, "summary.json").is_file()
    ref = heat().find(spec.name)
    assert ref is not None and ref.id == record.stack_id
    user, _ = clouds
    assert len([s for s in user.compute.servers() if s.name.startswith(spec.name)]) == spec.hosts + 1

    code, _, err = run_cli(capsys, "down", spec.name, "--force", "--yes")
    assert code == 0, err
    assert_nothing_left(clouds, spec.name, before)
    assert not state.exists(spec.name)


def test_an_image_missing_from_the_registry_is_refused_before_anything_exists(clouds, make_spec, spec_file, cluster_cleanup,
                                                                  capsys):
    """An application image the registry does not have: refused by the pre-check, nothing created."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-noimage", "10.87.0.0/24", application={"image": "nothere/app:1"})
    cluster_cleanup(spec.name)

    code, _, err, _ = up_cli(capsys, spec_file(spec))

    assert code == 2, err
    line = one_error(err)
    assert "application.image" in line and "nothere/app:1" in line, line
    assert cloud_counts(*clouds) == before


# --- 4. sweep -------------------------------------------------------------------------------------


def test_sweep_deletes_what_carries_a_dead_clusters_mark_and_nothing_else(clouds, capsys):
    user, _ = clouds
    network = user.network.create_network(name="ft-sweep-net")
    user.network.set_tags(network, [marks.cluster_tag("ft-sweep"), marks.GENERIC_TAG])
    group = user.network.create_security_group(name="ft-sweep-members",
                                               description=f"{marks.cluster_tag('ft-sweep')}: test")
    keypair = user.compute.create_keypair(name=marks.keypair_name("ft-sweep"))
    colleague = user.network.create_security_group(name="lab-nfs", description="a colleague's, with no mark")
    try:
        code, out, err = run_cli(capsys, "sweep", "--cloud", "local", "--json")
        assert code == 0, err
        found = {(i["kind"], i["name"]) for i in json.loads(out)["found"] if i["cluster"] == "ft-sweep"}
        assert found == {("network", "ft-sweep-net"), ("security_group", "ft-sweep-members"),
                         ("keypair", marks.keypair_name("ft-sweep"))}

        code, _, err = run_cli(capsys, "sweep", "--cloud", "local", "--yes")
        assert code == 0, err
        assert user.network.find_network(network.id) is None
        assert user.network.find_security_group(group.id) is None
        assert user.compute.find_keypair(keypair.name) is None
        assert user.network.find_security_group(colleague.id) is not None
    finally:
        user.network.delete_security_group(colleague, ignore_missing=True)
        user.network.delete_security_group(group, ignore_missing=True)
        user.network.delete_network(network, ignore_missing=True)
        user.compute.delete_keypair(keypair.name, ignore_missing=True)


# --- 5. scale -------------------------------------------------------------------------------------


def assert_runs_at_size(capsys, name: str, hosts: int, nodes: int) -> None:
    """The stack's update is complete, MPI spans NODES nodes, and the Swarm has each host once."""
    assert heat().status(heat().find(name))[0] == "UPDATE_COMPLETE"
    code, out, err = run_cli(capsys, "exec", name, "--mpi", "--", "/usr/local/bin/mpi_smoke")
    assert code == 0, err
    assert json.loads([line for line in out.splitlines() if line.startswith("{")][-1])["size"] == nodes
    nodes_listed = host_access(name, "manager").run("docker node ls --format '{{.Hostname}}'").output.split()
    assert sorted(nodes_listed) == sorted([f"{name}-manager"] + [f"{name}-worker-{i}" for i in range(hosts - 1)])


def test_scale_3_2_5_with_a_job_after_each_step_then_rollback(clouds, make_spec, cluster_cleanup, capsys):
    """Each scale is a deployment: ready means every node runs and MPI spans them all;
    removed workers leave the Swarm, and one made again under a removed one's name
    (worker-1) joins it once; rollback returns to the size before the last scale."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-scale", "10.89.0.0/24", nodes=6)
    cluster_cleanup(spec.name)
    lifecycle.up(spec)

    for hosts, nodes in ((2, 4), (5, 10)):
        record = lifecycle.scale(spec.name, hosts, nodes)

        assert (record.status, record.hosts_target, record.nodes_target) == ("ready", hosts, nodes)
        assert_runs_at_size(capsys, spec.name, hosts, nodes)

    record = lifecycle.rollback(spec.name)
    assert (record.status, record.hosts_target, record.nodes_target) == ("ready", 2, 4)
    assert_runs_at_size(capsys, spec.name, 2, 4)
    lifecycle.down(spec.name)
    assert_nothing_left(clouds, spec.name, before)


TOKEN_LIFETIME_S = 150


@pytest.mark.exclusive  # Keystone restarts, twice
def test_a_scale_up_after_keystone_tokens_expired_still_gets_every_host(clouds, local_cloud, make_spec,
                                                                      cluster_cleanup, monkeypatch):
    """Keystone's tokens live 150 s: a scale-up later than that still completes, because
    every new worker signals a wait condition of its own, with a token made for it."""
    # Not 120 s: keystoneauth takes a token that expires within 120 s for expired, so every
    # request of every service would fetch a new one (Keystone, swamped, made them 6-9 s);
    # at 150 s each token serves 30 s.
    monkeypatch.setenv("ASTROSTACK_LOCAL_TOKEN_LIFETIME", str(TOKEN_LIFETIME_S))
    local_cloud.stop(["keystone"], say=print)
    local_cloud.start(["keystone"], say=print)
    spec = make_spec("ft-expiry", "10.99.0.0/24", hosts=2, nodes=2)
    cluster_cleanup(spec.name)
    try:
        record = lifecycle.up(spec)
        # Every wait-condition token was made by the time the stack was complete: soon after, all have expired.
        since_stack = (datetime.now(timezone.utc) - record.phases["stack"].finished).total_seconds()
        time.sleep(max(0.0, TOKEN_LIFETIME_S + 10 - since_stack))

        record = lifecycle.scale(spec.name, 3, 3)

        assert (record.status, record.hosts_target) == ("ready", 3)
        assert heat().status(heat().find(spec.name))[0] == "UPDATE_COMPLETE"
    finally:
        monkeypatch.delenv("ASTROSTACK_LOCAL_TOKEN_LIFETIME")
        local_cloud.stop(["keystone"], say=print)
        local_cloud.start(["keystone"], say=print)


# --- 6. outages and interruptions ------------------------------------------------------------------


def deploy_with_outages(local_cloud, spec, outages: dict[str, float]) -> tuple[dict, list]:
    """`up` in a thread; at the start of each phase named in OUTAGES, Heat's API stops for
    that many seconds. Returns ({"record": ...} or {"error": ...}, the events)."""
    events, result, timers = [], {}, []

    def on_event(event):
        events.append(event)
        if event.kind == "start" and event.phase in outages:
            local_cloud.stop(["heat-api"], say=print)
            timer = threading.Timer(outages[event.phase], lambda: local_cloud.start(["heat-api"], say=print))
            timers.append(timer)
            timer.start()

    def deploy():
        try:
            result["record"] = lifecycle.up(spec, runtime=lifecycle.Runtime(on_event=on_event))
        except Exception as exc:  # the caller's assertions show it
            result["error"] = exc

    worker = threading.Thread(target=deploy)
    worker.start()
    worker.join(timeout=spec.timeouts.total + spec.timeouts.delete + 300)
    for timer in timers:
        timer.join()
    local_cloud.start(["heat-api"], say=print)
    return result, events


@pytest.mark.exclusive  # Heat's API stops
def test_heat_api_outages_in_every_phase_are_ridden_out(clouds, local_cloud, make_spec, cluster_cleanup):
    """Heat's API is gone for 20 s at the start of each phase: `up` says so and is ready in the end."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-outage", "10.95.0.0/24", **FAULT_SIZE)
    cluster_cleanup(spec.name)

    result, events = deploy_with_outages(local_cloud, spec, {"stack": 20, "hosts": 20, "nodes": 20})

    assert "record" in result, result.get("error")
    assert result["record"].status == "ready"
    said = [e for e in events if "does not answer" in e.message]
    assert {e.phase for e in said} == {"stack", "hosts", "nodes"}, [e.message for e in events]
    lifecycle.down(spec.name)
    assert_nothing_left(clouds, spec.name, before)


@pytest.mark.exclusive  # Heat's API stops
def test_an_outage_past_the_phase_deadline_fails_and_rolls_back_once_heat_returns(clouds, local_cloud, make_spec,
                                                                                cluster_cleanup):
    """Heat's API is gone for 80 s from the start of a 60 s nodes phase: exit 3 (timed out,
    naming the outage), evidence kept, and the rollback waits for Heat: nothing left."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-outage2", "10.100.0.0/24", **FAULT_SIZE, timeouts={"nodes_ready": 60})
    cluster_cleanup(spec.name)

    result, _ = deploy_with_outages(local_cloud, spec, {"nodes": 80})

    error = result.get("error")
    assert error is not None and error.exit_code == 3, error
    assert error.phase == "nodes" and "has not answered for" in error.message, error.message
    assert Path(error.evidence, "summary.json").is_file()
    assert_rolled_back(clouds, spec.name, before)


def test_ctrl_c_during_the_hosts_phase_leaves_a_usable_record(clouds, make_spec, spec_file, cluster_cleanup,
                                                             capsys, wait_timeout):
    """SIGINT while hosts boot: exit 130; `status` reports the cluster; `down` removes it all."""
    before = cloud_counts(*clouds)
    spec = make_spec("ft-sigint", "10.91.0.0/24", **FAULT_SIZE)
    cluster_cleanup(spec.name)
    process = astrostack_process("up", spec_file(spec), "--json")
    try:
        wait_for_event(process, phase="hosts", kind="start", timeout=wait_timeout)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=wait_timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    code, out, err = run_cli(capsys, "status", spec.name, "--quick", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["status"] == "creating"
    assert report["stack_status"] in ("CREATE_IN_PROGRESS", "CREATE_COMPLETE")

    code, _, err = run_cli(capsys, "down", spec.name, "--yes")
    assert code == 0, err
    assert_nothing_left(clouds, spec.name, before)
    assert not state.exists(spec.name)


def test_an_unknown_cluster_is_exit_2_everywhere(local_cloud, capsys):
    for argv in (["down", "ft-never-was", "--yes"], ["status", "ft-never-was"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert "ft-never-was" in one_error(err)


@pytest.mark.exclusive  # Heat's API stops
def test_up_fails_in_one_line_when_the_cloud_does_not_answer(local_cloud, make_spec, spec_file, capsys):
    spec = make_spec("ft-unreach", "10.88.0.0/24")
    local_cloud.stop(["heat-api"], say=print)
    try:
        code, _, err, _ = up_cli(capsys, spec_file(spec))
    finally:
        local_cloud.start(["heat-api"], say=print)

    assert code == 1, err
    assert "18004" in one_error(err) or "orchestration" in one_error(err)
    assert not state.exists(spec.name)

