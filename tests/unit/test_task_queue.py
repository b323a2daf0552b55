"""Task-queue clusters (kind: task-queue) without a cloud: the spec's kind and
its strict checks, what render writes for it (security groups by meaning, the
hosts' scripts and settings, no password anywhere), the task-map job schema,
the driver's placeholders and paths, and the probe's reading of the
scheduler's answers (a scripted manager)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from astrostack.cluster import dask as task_queue
from astrostack.cluster.access import Result
from astrostack.cluster.probe import TaskQueueProbe, probe_for
from astrostack.errors import InvalidInput, SpecError
from astrostack.lifecycle import resized
from astrostack.precheck import _evaluated, security_group_plan
from astrostack.render import environment, render, rendered_files
from astrostack.spec import Kind, spec_from_dict
from astrostack.taskqueue import driver_remote
from astrostack.taskqueue.job import last_summary, plan, task_map_from_dict

BASE = {"name": "tq", "kind": "task-queue", "hosts": 3, "ssh": {"allowed_cidr": "198.51.100.7/32"},
        "network": {"cidr": "10.61.0.0/24"}}


def tq_spec(**overrides: Any):
    return spec_from_dict({**BASE, **overrides})


# The spec -------------------------------------------------------------------------


def test_task_queue_nodes_are_the_dask_worker_processes_and_the_image_is_dask():
    spec = tq_spec(task_queue={"processes": 3, "threads": 2})
    assert spec.kind is Kind.task_queue and spec.nodes == 2 * 3
    assert spec.application.image == "astrostack/dask:latest"
    assert spec_from_dict(spec.model_dump(mode="json")) == spec  # the record's round trip


def test_mpi_cluster_is_the_default_and_its_hash_is_unchanged_by_kinds():
    import hashlib

    spec = spec_from_dict({k: v for k, v in BASE.items() if k != "kind"})
    assert spec.kind is Kind.mpi_cluster and spec.task_queue is None
    data = spec.model_dump(mode="json", exclude={"kind", "task_queue"})
    assert spec.spec_hash() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"kind": "batch"}, "kind: Input should be 'mpi-cluster' or 'task-queue', got 'batch'"),
    ({"hosts": 1, "nodes": 1}, "hosts: 1: a task-queue cluster needs at least 2 hosts"),
    ({"nodes": 5}, "nodes: 5: a task-queue cluster's nodes are its Dask worker processes"),
    ({"mode": "mpi"}, "mode: mpi is for kind mpi-cluster"),
    ({"task_queue": {"redis": "everywhere"}}, "task_queue.redis: Input should be 'per-worker' or 'scheduler'"),
    ({"task_queue": {"processes": "2"}}, "task_queue.processes: Input should be a valid integer"),
    ({"task_queue": {"threads": 0}}, "task_queue.threads: Input should be greater than or equal to 1"),
    ({"task_queue": {"dashboard": "yes"}}, "task_queue.dashboard: Input should be a valid boolean"),
    ({"task_queue": {"workers": 2}}, "task_queue.workers: unknown field"),
    ({"kind": "mpi-cluster", "task_queue": {}}, "task_queue: only for kind: task-queue"),
])
def test_a_bad_task_queue_spec_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(SpecError) as caught:
        tq_spec(**overrides)
    assert message in caught.value.message and "\n" not in caught.value.message


def test_scale_of_a_task_queue_follows_the_worker_vms():
    spec = tq_spec(task_queue={"processes": 2})
    assert resized(spec, 5, None).nodes == 4 * 2
    with pytest.raises(InvalidInput, match="--nodes"):
        resized(spec, 5, 9)


# Render -------------------------------------------------------------------------


def rules_of(template: dict[str, Any], group: str, kind: str) -> list[dict[str, Any]]:
    rules = template["resources"][group]["properties"]["rules"]
    return _evaluated(rules, {"mpi_mode": False, "task_queue": kind == "task-queue"})


def ports(rules: list[dict[str, Any]]) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {}
    for rule in rules:
        for port in range(rule.get("port_range_min") or 0, (rule.get("port_range_max") or 0) + 1):
            source = rule.get("remote_ip_prefix") or rule.get("remote_mode")
            found.setdefault(port, []).append(source)
    return found


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    files = rendered_files(tq_spec())
    return yaml.safe_load(files["cluster.yaml"])


def test_scheduler_and_dashboard_are_open_only_from_the_allowed_cidr(template):
    manager = ports(rules_of(template, "sg_manager_ssh", "task-queue"))
    assert manager[8786] == [{"get_param": "allowed_ssh_cidr"}]
    assert manager[8787] == [{"get_param": "allowed_ssh_cidr"}]
    assert 8786 not in ports(rules_of(template, "sg_manager_ssh", "mpi-cluster"))


def test_redis_is_open_only_from_the_cluster_network_and_dask_between_members(template):
    members = ports(rules_of(template, "sg_members", "task-queue"))
    assert members[6379] == [{"get_param": "private_cidr"}]
    assert members[8786] == ["remote_group_id"] and members[40000] == ["remote_group_id"]
    assert 2377 not in members  # no Swarm in a task queue
    assert 6379 not in ports(rules_of(template, "sg_members", "mpi-cluster"))


def test_the_security_group_count_follows_the_kind():
    assert security_group_plan("swarm", "task-queue")[1] == security_group_plan("swarm")[1] - 5 + 3 + 2


def test_environment_and_user_data_carry_the_task_queue(tmp_path):
    spec = tq_spec(task_queue={"processes": 2, "threads": 4, "redis": "per-worker", "dashboard": False})
    assert environment(spec)["parameters"]["cluster_kind"] == "task-queue"
    rendered = render(spec, tmp_path / "out")
    worker = yaml.safe_load(rendered.user_data["worker"].read_text())
    files = {entry["path"]: entry["content"] for entry in worker["write_files"]}
    env = dict(line.split("=", 1) for line in files["/etc/astrostack/cluster.env"].splitlines())
    assert (env["KIND"], env["TQ_PROCESSES"], env["TQ_THREADS"], env["TQ_REDIS"], env["TQ_DASHBOARD"]) == \
        ("task-queue", "2", "4", "per-worker", "false")
    assert "dask worker" in files["/usr/local/sbin/astrostack-nodes"]  # taskqueue.sh, not nodes.sh
    assert "docker service create" not in files["/usr/local/sbin/astrostack-nodes"]


def test_the_redis_password_is_made_on_the_hosts_and_no_output_can_tell_it():
    """Derived on each host from the cluster secret (taskqueue.sh, 0600 files): the
    render holds only Heat's placeholder for the secret, and no output references it."""
    files = rendered_files(tq_spec())
    template = yaml.safe_load(files["cluster.yaml"])
    manager = yaml.safe_load(files["user-data/manager.yaml"])
    secret = [entry for entry in manager["write_files"] if "__ASTROSTACK_SECRET__" in entry["content"]]
    assert [(e["path"], e["permissions"]) for e in secret] == [("/etc/astrostack/secret", "0600")]
    outputs = json.dumps(template["outputs"])
    assert "cluster_secret" not in outputs and "redis" not in outputs.lower()


# The task-map job -------------------------------------------------------------------


def test_a_task_map_job_is_checked_and_its_command_split():
    job = task_map_from_dict({"profile": "task-map", "inputs": "data/*.fits", "command": "prog --in {input} -o '{stem}.out'"})
    assert job.command == ["prog", "--in", "{input}", "-o", "{stem}.out"]
    assert (job.retries, job.task_timeout_s, job.workdir) == (1, 600, "{job_dir}")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"inputs": "/etc/*"}, "inputs: '/etc/*' must be a path relative to the share"),
    ({"inputs": "../x/*"}, "inputs: '../x/*' must be a path relative to the share"),
    ({"command": "prog {inptu}"}, "command: '{inptu}' has an unknown placeholder {inptu}"),
    ({"command": []}, "command: the command is empty"),
    ({"retries": "2"}, "retries: Input should be a valid integer"),
    ({"task_timeout_s": 0}, "task_timeout_s: Input should be greater than or equal to 1"),
    ({"env": {"1X": "a"}}, "env: '1X' is not an environment variable name"),
    ({"stdin": "/dev/zero"}, "stdin: '/dev/zero' must be a path relative to the share"),
    ({"workdir": "../out"}, "workdir: '../out' must be a path relative to the share"),
    ({"params": []}, "params: unknown field"),
])
def test_a_bad_task_map_job_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(InvalidInput) as caught:
        task_map_from_dict({"profile": "task-map", "inputs": "data/*", "command": "prog {input}", **overrides},
                           source="job.yaml")
    assert caught.value.message.startswith(f"job.yaml: {message}"), caught.value.message


def test_the_driver_fills_known_placeholders_and_keeps_paths_on_the_share():
    spec = tq_spec()
    job = task_map_from_dict({"profile": "task-map", "inputs": "data/*.txt", "stdin": "{relpath}",
                              "command": ["awk", "{print $1}", "{input}"], "env": {"OUT": "{job_dir}/{stem}.out"},
                              "workdir": "work/{index}"})
    job_plan = plan(spec, job, "tm-1")
    task = driver_remote.task_of(job_plan, "data/a.b.txt", 3)
    assert task["argv"] == ["awk", "{print $1}", "/share/data/a.b.txt"]
    assert task["env"] == {"OUT": "/share/jobs/tm-1/a.out"}
    assert (task["stdin"], task["workdir"]) == ("/share/data/a.b.txt", "/share/work/3")
    with pytest.raises(ValueError):
        driver_remote.on_share("/etc/passwd")
    assert job_plan["redis"] == "scheduler" and job_plan["scheduler"] == "tcp://127.0.0.1:8786"


def test_the_summary_is_the_drivers_last_summary_line():
    output = 'progress 3/3 tasks\nSUMMARY {"tasks": 3, "succeeded": 3}\n'
    assert last_summary(output) == {"tasks": 3, "succeeded": 3}
    assert last_summary("the manager was lost\n") == {}


# The probe ---------------------------------------------------------------------------


class ScriptedManager:
    """A manager whose answers to the view script are scripted, one per call."""

    def __init__(self, *outputs: str):
        self.outputs = list(outputs)
        self.scripts: list[str] = []

    def run(self, script: str, *, timeout: float = 120, stdin: str | None = None) -> Result:
        self.scripts.append(script)
        return Result(0, self.outputs.pop(0))


def report(host: str, state: str, reason: str = "") -> str:
    return json.dumps({"host": host, "state": state, "reason": reason, "ip": "10.61.0.9"})


def test_ready_only_when_every_worker_registered_and_the_smoke_task_ran_on_each():
    spec = tq_spec()
    running = "\n".join(report(h, "running") for h in ("manager", "worker-0", "worker-1"))
    smoke = {"tasks": 2, "workers_reached": 2, "hosts": ["a", "b"], "redis": {"127.0.0.1": True}, "ok": True}
    manager = ScriptedManager(
        running + '\nDASK {"workers": 1, "names": ["worker-0"]}\n',
        running + "\nDASK " + json.dumps({"workers": 2, "names": ["worker-0", "worker-1"], "smoke": smoke}) + "\n")
    probe = probe_for(spec, manager)
    assert isinstance(probe, TaskQueueProbe)

    first, second = probe.observe_nodes(), probe.observe_nodes()

    assert (first.smoke_ok, first.failure) == (None, None) and "1/2 Dask workers registered" in first.detail
    assert (second.ready, second.smoke_ok) == (2, True)
    assert "--smoke" in manager.scripts[0] and "docker exec -i astro-dask-scheduler python3 -" in manager.scripts[0]


def test_a_host_that_failed_to_start_its_containers_fails_the_nodes_phase():
    manager = ScriptedManager(report("worker-1", "failed", "cannot pull 172.24.4.1:5050/astrostack/dask:latest")
                              + '\nDASK {"error": "the scheduler container is not running yet"}\n')
    view = TaskQueueProbe(tq_spec(), manager).observe_nodes()
    assert view.failure == "worker-1: cannot pull 172.24.4.1:5050/astrostack/dask:latest"


def test_a_failed_smoke_test_is_not_ready():
    smoke = {"tasks": 2, "workers_reached": 2, "redis": {"127.0.0.1": "AuthenticationError: invalid password"},
             "ok": False}
    view = task_queue.parse_view("DASK " + json.dumps({"workers": 2, "names": [], "smoke": smoke}))
    assert view.workers == 2 and not view.smoke_ok


def test_the_remote_programs_are_package_data_and_valid_python():
    for package, name in (("astrostack.cluster", "dask_remote.py"), ("astrostack.taskqueue", "driver_remote.py")):
        source = task_queue.remote_program(package, name)
        compile(source, name, "exec")
        assert "ASTROSTACK_PY_END" not in source
