"""A cluster's life on the real local cloud: up, exec, status, scale, down, and
every way a deployment fails (a host whose cloud-init fails, a host that never
signals, a VM that dies, a resource that fails, an image that does not exist,
an unreachable or flaky Heat API, Ctrl-C), each followed by a check that
nothing is left behind.

Real components only: the local Heat engine of the session (conftest's
``heat_engine``, its own ASTROSTACK_HOME), container VMs running cloud-init,
Docker Swarm, Open MPI. Outcomes are read from Heat, from Docker (objects
labelled ``astrostack.cluster=NAME``), from the state store and from the
``astrostack`` command's exit code and stderr. Phase timeouts come from
ASTROSTACK_TEST_TIMEOUT (conftest ``phase_timeout()``); one cluster at a time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest
import requests
from conftest import free_port, labelled
from keystoneauth1 import session as ks_session
from openstack import connection as os_connection

from astrostack import cloud, lifecycle, state
from astrostack.cli.main import main
from astrostack.cluster import swarm
from astrostack.local.cloud import share_dir
from astrostack.stack import Heat

pytestmark = pytest.mark.functional


# --- helpers -------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``astrostack ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def heat() -> Heat:
    return Heat(cloud.connect("local"))


def assert_nothing_left(docker_client, name: str) -> None:
    """No Docker object with the cluster's label, no stack, no shared folder."""
    assert labelled(docker_client, name) == {"containers": [], "networks": [], "volumes": []}
    assert heat().find(name) is None
    assert not share_dir(name).exists()


def vm_hostnames(docker_client, name: str) -> set[str]:
    """Hostnames of the cluster's container VMs (manager, workers and the NFS VM)."""
    containers = docker_client.containers.list(all=True, filters={"label": f"astrostack.cluster={name}"})
    return {c.attrs["Config"]["Hostname"].removeprefix(f"{name}-") for c in containers}


# --- 1. success ------------------------------------------------------------------------


def test_up_exec_status_down(make_spec, cluster_cleanup, docker_client, capsys):
    """3 hosts, 12 nodes: ready with every phase done; an MPI job spans 12 ranks; down leaves nothing."""
    spec = make_spec("ft-ok", "10.81.0.0/24")
    cluster_cleanup(spec.name)

    record = lifecycle.up(spec)

    assert record.status == "ready"
    assert (record.hosts_ready, record.nodes_ready) == (spec.hosts, spec.nodes) == (3, 12)
    assert {phase: entry.outcome for phase, entry in record.phases.items()} == \
        {"stack": "done", "hosts": "done", "nodes": "done"}
    assert state.load(spec.name).status == "ready"
    # The stack phase ends when the servers exist, not at the first poll (all INIT_COMPLETE then).
    servers_done = max(datetime.fromisoformat(r["updated_time"].replace("Z", "+00:00"))
                       for r in heat().resources(heat().find(spec.name))
                       if r["resource_name"] in ("manager", "nfs_server", "server"))
    assert record.phases["stack"].finished >= servers_done
    assert heat().status(heat().find(spec.name))[0] == "CREATE_COMPLETE"

    code, out, err = run_cli(capsys, "exec", spec.name, "--mpi", "--", "/usr/local/bin/mpi_smoke")
    assert code == 0, err
    smoke = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert smoke["size"] == 12
    assert len(set(smoke["hosts"])) == 12

    code, out, err = run_cli(capsys, "status", spec.name, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["status"], report["stack_status"]) == ("ready", "CREATE_COMPLETE")
    assert all(entry["seconds"] is not None for entry in report["phases"].values())

    # Each wait condition watches its own handle (the engine gives each stack user an id).
    resources = {r["resource_name"]: r for r in heat().resources(heat().find(spec.name))}
    assert resources["hosts_handle"]["physical_resource_id"] != resources["nfs_handle"]["physical_resource_id"]

    code, out, err = run_cli(capsys, "down", spec.name)
    assert code == 0, err
    assert_nothing_left(docker_client, spec.name)
    assert not state.exists(spec.name)


# --- 2.-7. failures: rolled back (or kept), evidence first -------------------------------


def up_cli(capsys, spec_path: str, *extra: str) -> tuple[int, str, str, float]:
    """``astrostack up SPEC`` through the CLI: (exit code, stdout, stderr, seconds)."""
    started = time.monotonic()
    code, out, err = run_cli(capsys, "up", spec_path, *extra)
    return code, out, err, time.monotonic() - started


def one_error(stderr: str) -> str:
    """The single `error:` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    return lines[0]


def assert_rolled_back(docker_client, name: str) -> state.ClusterRecord:
    record = state.load(name)
    assert record.status == "rolled_back"
    assert record.stack_id is None
    assert_nothing_left(docker_client, name)
    return record


def test_cloud_init_failure_fails_fast_with_evidence(make_spec, spec_file, cluster_cleanup, docker_client, capsys):
    """worker-1's cloud-init fails: exit 3 long before the hosts deadline, evidence kept, nothing left."""
    spec = make_spec("ft-cifail", "10.82.0.0/24", local={"faults": [{"host": "worker-1", "fault": "cloud-init-fail"}]})
    cluster_cleanup(spec.name)

    code, _, err, elapsed = up_cli(capsys, spec_file(spec))

    assert code == 3, err
    line = one_error(err)
    assert "hosts phase failed" in line and "worker-1" in line and "fault injection: cloud-init-fail" in line
    record = assert_rolled_back(docker_client, spec.name)
    hosts = record.phases["hosts"]
    assert hosts.outcome == "failed"
    assert (hosts.finished - hosts.started).total_seconds() < spec.timeouts.hosts_ready / 2
    assert elapsed < spec.timeouts.stack_create + spec.timeouts.hosts_ready / 2

    evidence = Path(record.evidence_dir)
    assert evidence.name in line
    summary = json.loads((evidence / "summary.json").read_text())
    assert (summary["cluster"], summary["phase"]) == (spec.name, "hosts")
    signals = json.loads((evidence / "host_signals.json").read_text())
    assert signals["worker-1"]["status"] == "FAILURE"
    assert "cloud-init-fail" in signals["worker-1"]["reason"]
    consoles = {path.name: path.read_text() for path in (evidence / "consoles").glob("*.log")}
    assert len(consoles) == spec.hosts + 1  # and the NFS VM
    assert any("fault injection: cloud-init-fail" in text for text in consoles.values())


def test_host_that_never_signals_times_out(make_spec, spec_file, cluster_cleanup, docker_client, capsys):
    """worker-1 never signals: the hosts phase ends at its 60 s deadline, exit 3, nothing left."""
    spec = make_spec("ft-nosignal", "10.83.0.0/24", timeouts={"hosts_ready": 60},
                     local={"faults": [{"host": "worker-1", "fault": "never-signal"}]})
    cluster_cleanup(spec.name)

    code, _, err, elapsed = up_cli(capsys, spec_file(spec))

    assert code == 3, err
    line = one_error(err)
    # Heat's wait condition or astrostack's deadline, whichever ends first; either way the silent host is named.
    assert "hosts phase" in line and "worker-1" in line, line
    assert "no signal from worker-1" in line or "none from worker-1" in line, line
    record = assert_rolled_back(docker_client, spec.name)
    assert record.phases["hosts"].outcome in ("timeout", "failed")
    assert record.hosts_ready == 2
    assert elapsed < spec.timeouts.stack_create + spec.timeouts.hosts_ready + spec.timeouts.delete


def test_vm_that_dies_after_boot_is_detected(make_spec, spec_file, cluster_cleanup, docker_client, capsys):
    """worker-0's VM stops right after boot: the dead server (or its missing signal) is named; rolled back."""
    spec = make_spec("ft-die", "10.84.0.0/24", local={"faults": [{"host": "worker-0", "fault": "die-after-boot"}]})
    cluster_cleanup(spec.name)

    code, _, err, elapsed = up_cli(capsys, spec_file(spec))

    assert code == 3, err
    line = one_error(err)
    assert "worker-0" in line, line
    assert_rolled_back(docker_client, spec.name)
    assert elapsed < spec.timeouts.stack_create + spec.timeouts.hosts_ready / 2


def test_keep_on_failure_keeps_then_down_force_cleans(make_spec, spec_file, cluster_cleanup, docker_client, capsys):
    """--keep-on-failure: exit 4 with the cluster kept as it failed; `down --force` removes everything."""
    spec = make_spec("ft-keep", "10.85.0.0/24", local={"faults": [{"host": "worker-1", "fault": "cloud-init-fail"}]})
    cluster_cleanup(spec.name)

    code, _, err, _ = up_cli(capsys, spec_file(spec), "--keep-on-failure")

    assert code == 4, err
    assert "kept for debugging" in one_error(err)
    record = state.load(spec.name)
    assert record.status == "failed" and record.stack_id
    assert Path(record.evidence_dir, "summary.json").is_file()
    ref = heat().find(spec.name)
    assert ref is not None and ref.id == record.stack_id
    left = labelled(docker_client, spec.name)
    assert len(left["containers"]) == spec.hosts + 1 and left["networks"] and left["volumes"]

    code, _, err = run_cli(capsys, "down", spec.name, "--force")
    assert code == 0, err
    assert_nothing_left(docker_client, spec.name)
    assert not state.exists(spec.name)


def test_failing_resource_is_named(make_spec, spec_file, cluster_cleanup, docker_client, capsys):
    """A Docker network already holds the subnet's cidr: the subnet fails, exit 3 at once, named."""
    spec = make_spec("ft-subnet", "10.86.0.0/24")
    cluster_cleanup(spec.name)
    for stale in docker_client.networks.list(filters={"label": "astrostack.test=ft-subnet-blocker"}):
        stale.remove()
    pool = docker.types.IPAMPool(subnet=spec.network.cidr)
    blocker = docker_client.networks.create("ft-subnet-blocker", driver="bridge",
                                            labels={"astrostack.test": "ft-subnet-blocker"},
                                            ipam=docker.types.IPAMConfig(pool_configs=[pool]))
    try:
        code, _, err, elapsed = up_cli(capsys, spec_file(spec))
    finally:
        blocker.remove()

    assert code == 3, err
    line = one_error(err)
    assert "stack phase failed" in line and "resource subnet failed" in line and "ft-subnet-blocker" in line, line
    assert_rolled_back(docker_client, spec.name)
    assert elapsed < spec.timeouts.stack_create


def test_image_missing_from_registry_fails_in_nodes_phase(make_spec, spec_file, cluster_cleanup, docker_client,
                                                          capsys):
    """An application image nobody has: the nodes phase fails on the task error, not at its deadline."""
    spec = make_spec("ft-noimage", "10.87.0.0/24", application={"image": "nothere/app:1"})
    cluster_cleanup(spec.name)

    code, _, err, _ = up_cli(capsys, spec_file(spec))

    assert code == 3, err
    line = one_error(err)
    assert "nodes phase failed" in line, line
    assert "nothere/app:1" in line and any(marker in line for marker in swarm.FATAL_TASK_ERRORS), line
    record = assert_rolled_back(docker_client, spec.name)
    nodes = record.phases["nodes"]
    assert nodes.outcome == "failed"
    assert (nodes.finished - nodes.started).total_seconds() < spec.timeouts.nodes_ready


# --- 8. scale ------------------------------------------------------------------------------


def test_scale_up_then_down_removes_the_highest_indexes(make_spec, cluster_cleanup, docker_client):
    """3 -> 5 -> 2 hosts: VM containers and the stack's worker_count follow; scale-down keeps worker-0."""
    spec = make_spec("ft-scale", "10.89.0.0/24")
    cluster_cleanup(spec.name)
    lifecycle.up(spec)
    assert vm_hostnames(docker_client, spec.name) == {"nfs", "manager", "worker-0", "worker-1"}

    for hosts in (5, 2):
        record = lifecycle.scale(spec.name, hosts)

        assert record.hosts_target == hosts
        ref = heat().find(spec.name)
        assert heat().status(ref)[0] == "UPDATE_COMPLETE"
        assert int(heat().parameters(ref)["worker_count"]) == hosts - 1
        running = docker_client.containers.list(filters={"label": f"astrostack.cluster={spec.name}"})
        assert len(running) == hosts + 1  # and the NFS VM
        workers = {f"worker-{i}" for i in range(hosts - 1)}
        assert vm_hostnames(docker_client, spec.name) == {"nfs", "manager"} | workers

    lifecycle.down(spec.name)
    assert_nothing_left(docker_client, spec.name)


# --- 9.-10. nothing to do, nobody answering ---------------------------------------------------


def test_down_of_an_unknown_cluster_is_a_no_op(heat_engine, capsys):
    code, out, err = run_cli(capsys, "down", "ft-never-was")

    assert code == 0, err
    assert err == ""
    assert out.strip() == "no cluster ft-never-was is known here (see `astrostack list`); nothing to do"


def astrostack_process(*argv: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """``astrostack ARGV`` as a process of its own (the console script's code path)."""
    return subprocess.Popen([sys.executable, "-m", "astrostack.cli.main", *argv], env=env or os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run_astrostack(*argv: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    process = astrostack_process(*argv, env=env)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture
def second_engine(heat_engine, tmp_path, wait_timeout):
    """Another local Heat engine in a home of its own: (its environment, its pid)."""
    from astrostack.local import engine

    env = {**os.environ, "ASTROSTACK_HOME": str(tmp_path / "home2"),
           "ASTROSTACK_HEAT_PORT": str(free_port(engine.choose_bind_address()))}
    started = run_astrostack("local", "start", env=env, timeout=wait_timeout)
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / "home2" / "local" / "heat" / "heat-all.pid").read_text())
    try:
        yield env, pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        run_astrostack("local", "stop", env=env, timeout=wait_timeout)


def test_heat_api_unreachable_is_one_error_line(second_engine, make_spec, spec_file, docker_client, wait_timeout):
    """The engine frozen (process alive, API silent), then stopped: `up` fails with one line, creates nothing."""
    env, pid = second_engine
    spec = make_spec("ft-unreach", "10.88.0.0/24")
    path = spec_file(spec)
    home = Path(env["ASTROSTACK_HOME"])

    os.kill(pid, signal.SIGSTOP)
    frozen = run_astrostack("up", path, env=env, timeout=wait_timeout)
    os.kill(pid, signal.SIGCONT)
    stopped = run_astrostack("local", "stop", env=env, timeout=wait_timeout)
    assert stopped.returncode == 0, stopped.stderr
    down = run_astrostack("up", path, env=env, timeout=wait_timeout)

    for result, expected in ((frozen, f"local Heat engine (pid {pid}) does not answer"),
                             (down, "local Heat engine is not running")):
        assert result.returncode == 1, result.stderr
        assert expected in one_error(result.stderr)
        assert result.stderr.strip() == one_error(result.stderr)
        assert not (home / "clusters" / f"{spec.name}.json").exists()
        assert labelled(docker_client, spec.name) == {"containers": [], "networks": [], "volumes": []}


# --- 11. a flaky Heat API -------------------------------------------------------------------


class FlakyProxy(ThreadingHTTPServer):
    """An HTTP proxy in front of the Heat API answering 503 to every ``every``-th
    request (without forwarding it) until it has served ``limit`` of them."""

    daemon_threads = True

    def __init__(self, upstream: str, every: int = 3, limit: int = 40):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.every, self.limit = every, limit
        self.requests = self.served_503 = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/admin"

    def should_fail(self) -> bool:
        with self.lock:
            self.requests += 1
            fail = self.requests % self.every == 0 and self.served_503 < self.limit
            self.served_503 += fail
            return fail


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyProxy

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.should_fail():
            self._answer(503, {"Content-Type": "application/json"}, b'{"error": "injected by FlakyProxy"}')
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        answer = upstream.getresponse()
        payload = answer.read()
        kept = {k: v for k, v in answer.getheaders()
                if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        upstream.close()
        self._answer(answer.status, kept, payload)

    def _answer(self, status: int, headers: dict, payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay

    def log_message(self, *args) -> None:
        pass


def connect_through(url: str):
    """A Connection like ``cloud.connect('local')`` whose orchestration endpoint is URL."""
    direct = requests.Session()
    direct.trust_env = False
    session = ks_session.Session(auth=cloud.LocalHeatAuth(url), session=direct)
    return os_connection.Connection(session=session, region_name="RegionOne")


def test_transient_5xx_bursts_are_retried(heat_engine, make_spec, cluster_cleanup, docker_client, capsys):
    """Every 3rd API call answers 503 for a while: `up` still succeeds, with one stack, no twin."""
    spec = make_spec("ft-flaky", "10.90.0.0/24")
    cluster_cleanup(spec.name)
    proxy = FlakyProxy(heat_engine.url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        record = lifecycle.up(spec, runtime=lifecycle.Runtime(connect=lambda _cloud: connect_through(proxy.url)))
    finally:
        proxy.shutdown()
        proxy.server_close()

    assert record.status == "ready"
    assert proxy.served_503 >= 10, (proxy.requests, proxy.served_503)
    assert [s["stack_name"] for s in heat().list_stacks()].count(spec.name) == 1
    code, _, err = run_cli(capsys, "down", spec.name)
    assert code == 0, err
    assert_nothing_left(docker_client, spec.name)


# --- 12. Ctrl-C ---------------------------------------------------------------------------


def test_ctrl_c_during_the_hosts_phase_leaves_a_usable_record(make_spec, spec_file, cluster_cleanup, docker_client,
                                                             capsys, wait_timeout):
    """SIGINT while hosts boot: exit 130; `status` reports the cluster; `down` removes it all."""
    spec = make_spec("ft-sigint", "10.91.0.0/24")
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
    code, out, err = run_cli(capsys, "status", spec.name, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["status"] == "creating"
    assert report["stack_status"] in ("CREATE_IN_PROGRESS", "CREATE_COMPLETE")

    code, _, err = run_cli(capsys, "down", spec.name)
    assert code == 0, err
    assert_nothing_left(docker_client, spec.name)
    assert not state.exists(spec.name)


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
