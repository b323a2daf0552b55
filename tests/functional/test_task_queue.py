"""A task-queue cluster (kind: task-queue) on the real local cloud: up (hosts
signalled, then 2 Dask workers registered and a smoke task on each), 200 tiny
tasks mapped over files on the share with every result in Redis exactly once
while a worker VM is stopped mid-job (its tasks rerun on the other, none
lost), the Redis password nowhere astrostack writes; then worker-1's VM
started again and a scale 3 -> 4 -> 2 with a job after each step; down
leaving nothing. About 6-8 minutes on 2 cores."""

from __future__ import annotations

import json
import shlex
import threading
import time

import pytest
from conftest import built_image, cloud_counts
from test_clusters import assert_nothing_left

from astrostack import lifecycle, paths, state
from astrostack.cli.main import main
from astrostack.cluster import dask as cluster_dask
from astrostack.cluster.access import host_access
from astrostack.spec import spec_from_dict
from astrostack.taskqueue import connect as tq_connect
from astrostack.taskqueue import job as task_map

pytestmark = pytest.mark.functional
CIDR = "10.61.0.0/24"  # no other test uses it
TASKS = 200
KILL_AFTER = 40  # results seen before worker-1's VM is stopped
INPUTS = "tq-inputs"
RETIRED_STAYS_AWAY_S = 20  # a restarted worker registered again within 10 s


@pytest.fixture(scope="session")
def dask_image(docker_client):
    """astrostack/dask on this machine (built once)."""
    return built_image("dask")


def redis(manager, *args: str) -> str:
    """redis-cli in the scheduler's Redis container, the password from its 0600 file (never on a command line)."""
    quoted = " ".join(shlex.quote(a) for a in args)
    result = manager.run(f"REDISCLI_AUTH=$(cat {tq_connect.PASSWORD_FILE}) docker exec -e REDISCLI_AUTH "
                         f"astro-redis redis-cli --no-auth-warning {quoted}", timeout=60)
    assert result.ok, result.output
    return result.output


def files_astrostack_wrote(name: str) -> list:
    state_dir = paths.state_dir()
    return [p for p in state_dir.rglob("*") if p.is_file() and p.name.startswith(name)] + \
        [p for p in (state_dir / f"{name}.render").rglob("*") if p.is_file()]


def test_task_queue_maps_200_tasks_into_redis_exactly_once_through_a_lost_worker_then_scales(
        clouds, make_spec, cluster_cleanup, dask_image, capsys):
    user, admin = clouds
    before = cloud_counts(user, admin)
    spec = make_spec("ft-taskq", CIDR, kind="task-queue", hosts=3, nodes=2, application={"image": dask_image},
                     task_queue={"processes": 1, "threads": 1, "redis": "scheduler", "dashboard": True})
    cluster_cleanup(spec.name)

    record = lifecycle.up(spec)
    assert record.status == "ready"
    assert (record.hosts_ready, record.nodes_ready) == (3, 2)

    manager = host_access(spec.name, "manager")
    setup = manager.run(f"mkdir -p /mnt/share/{INPUTS} && cd /mnt/share/{INPUTS} && "
                        f"for i in $(seq 0 {TASKS - 1}); do printf 'file %s\\n' $i > f$i.txt; done", timeout=120)
    assert setup.ok, setup.output

    # The kill: worker-1's VM stopped through Nova once KILL_AFTER results are in.
    seen = {"done": 0}
    stopped = threading.Event()
    worker_1 = user.compute.find_server(f"{spec.name}-worker-1", ignore_missing=False)

    def on_output(chunk: bytes) -> None:
        for line in chunk.decode(errors="replace").splitlines():
            if line.startswith("progress "):
                seen["done"] = int(line.split()[1].split("/")[0])
        if seen["done"] >= KILL_AFTER and not stopped.is_set():
            stopped.set()
            threading.Thread(target=user.compute.stop_server, args=(worker_1,), daemon=True).start()

    job = task_map.task_map_from_dict({
        "profile": "task-map", "name": "tq200", "inputs": f"{INPUTS}/*.txt",
        "command": ["bash", "-c", "sleep 0.15; cat {input}; echo \"$TASK_STEM\""],
        "env": {"TASK_STEM": "{stem}"}, "task_timeout_s": 60, "retries": 2, "timeout_s": 300,
    })
    result = task_map.run_task_map(state.load(spec.name), job, on_output=on_output)
    assert stopped.is_set(), result.output_tail
    assert result.exit_code == 0, result.output_tail
    summary = result.summary
    assert (summary["tasks"], summary["succeeded"], summary["failed"], summary["unfinished"]) == (TASKS, TASKS, 0, 0)
    assert summary["redis_duplicates_refused"] == 0

    # Every result in Redis exactly once: one hash field per file, pushed once onto the written list.
    results_key, written_key = summary["redis"]["results_key"], summary["redis"]["written_key"]
    assert int(redis(manager, "HLEN", results_key)) == TASKS
    written = redis(manager, "LRANGE", written_key, "0", "-1").split()
    assert sorted(written) == sorted(f"{INPUTS}/f{i}.txt" for i in range(TASKS))
    sample = json.loads(redis(manager, "HGET", results_key, f"{INPUTS}/f7.txt"))
    assert (sample["exit_code"], sample["stdout"]) == (0, "file 7\nf7\n")
    hosts = {json.loads(line)["worker_name"] for line in
             manager.run(f"cat {result.job_dir}/results.jsonl", timeout=60).output.splitlines()}
    assert hosts == {"worker-0", "worker-1"}, hosts  # both ran tasks before worker-1 was stopped
    assert int(manager.run(f"cat {result.job_dir}/exit_code", timeout=60).output) == 0
    assert [job["id"] for job in state.load(spec.name).jobs] == [result.id]

    # The Redis password: on the manager (0600), nowhere astrostack wrote or Heat tells.
    password = tq_connect.read_password(manager)
    assert len(password) == 64
    assert manager.run(f"stat -c %a {tq_connect.PASSWORD_FILE}", timeout=60).output.strip() == "600"
    for path in files_astrostack_wrote(spec.name):
        assert password not in path.read_text(errors="replace"), path
    from astrostack.stack import Heat

    heat = Heat(user)
    assert password not in json.dumps(heat.outputs(heat.find(spec.name)))
    assert password not in result.output_tail

    # connect: the Client address through the tunnel and Redis, the password only when asked.
    capsys.readouterr()
    assert main(["connect", spec.name, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["scheduler_through_tunnel"] == "tcp://127.0.0.1:8786"
    assert "-L" in shown["tunnel"] and shown["redis"][0].startswith("redis://:****@10.61.0.")
    assert shown["versions"].startswith("dask==2025.5.1 distributed==2025.5.1")
    assert password not in json.dumps(shown) and shown["password"] is None
    assert main(["connect", spec.name, "--show-password", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["password"] == password

    # The same cluster (one up less on CI): worker-1's VM started again gets its worker back;
    # then scale, a deployment for a task queue too, 3 -> 4 -> 2 hosts, a job after each.
    user.compute.start_server(user.compute.wait_for_server(worker_1, status="SHUTOFF", wait=120))
    wait_for_workers(spec, manager, ["worker-0", "worker-1"])
    scale_and_run_a_job(spec, manager, 4, {"worker-0", "worker-1", "worker-2"})
    # A scale-down retires the workers first. Retired alone, worker-2 leaves and stays away
    # while its VM runs on: its container's restart policy (unless-stopped) does not start it
    # again (on this cloud the VM is gone before that could be seen in a scale-down).
    cluster_dask.retire(manager, {"worker-2": host_access(spec.name, "worker-2")})
    time.sleep(RETIRED_STAYS_AWAY_S)
    assert cluster_dask.observe(spec, manager).names == ["worker-0", "worker-1"]
    scale_and_run_a_job(spec, manager, 2, {"worker-0"})

    lifecycle.down(spec.name)
    assert_nothing_left(clouds, spec.name, before)


def wait_for_workers(spec, manager, names: list, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while (seen := cluster_dask.observe(spec, manager).names) != names:
        assert time.monotonic() < deadline, f"Dask workers {seen}, not {names}, after {deadline_s:.0f} s"
        time.sleep(3)


def scale_and_run_a_job(spec, manager, hosts: int, workers: set) -> None:
    """Scale to HOSTS; the scheduler knows exactly WORKERS at once, and a job's tasks ran on all of them."""
    record = lifecycle.scale(spec.name, hosts)
    assert (record.status, record.hosts_target, record.nodes_target) == ("ready", hosts, hosts - 1)
    assert cluster_dask.observe(spec_from_dict(record.spec), manager).names == sorted(workers)
    job = task_map.task_map_from_dict({
        "profile": "task-map", "name": f"at{hosts}", "inputs": f"{INPUTS}/f1?.txt",  # 10 files
        "command": ["bash", "-c", "sleep 0.5; cat {input}"], "task_timeout_s": 60, "retries": 0, "timeout_s": 180})
    result = task_map.run_task_map(state.load(spec.name), job)
    assert result.exit_code == 0, result.output_tail
    assert (result.summary["succeeded"], result.summary["failed"]) == (10, 0), result.summary
    lines = manager.run(f"cat {result.job_dir}/results.jsonl", timeout=60).output.splitlines()
    assert {json.loads(line)["worker_name"] for line in lines} == workers
