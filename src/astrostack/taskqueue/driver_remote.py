"""The task-map driver: run by astrostack inside a task queue's scheduler
container (`python3 - PLAN_B64`), never imported there. It maps a command
over files on the share with Dask, retries failed tasks, writes each task's
final result into Redis exactly once, and leaves in the job folder
(/share/jobs/<id>/): job.json, command.txt, results.jsonl (one line per
task), summary.json and exit_code; its standard output (progress lines, then
`SUMMARY {...}`) is output.log. Needs only the image's Dask and redis; the
Redis password comes from the 0600 file mounted into the container and is
never printed.

Exactly once: every task has one key in the job's results hash, written with
HSETNX when its last attempt ends, and pushed onto the job's `written` list
only when that write was the first (a rerun of a task whose worker died is a
new attempt, never a second result).
"""

import base64
import glob
import json
import os
import re
import socket
import sys
import time

PASSWORD_FILE = "/run/secrets/redis_password"
SHARE = "/share"
OUTPUT_LIMIT = 4096
PROGRESS_EVERY_S = 2.0
PLACEHOLDER = re.compile(r"\{(input|relpath|name|stem|index|job_dir|job_id)\}")


# What one task is, as a worker runs it ------------------------------------------


def placeholders(relpath, index, job_dir, job_id):
    name = os.path.basename(relpath)
    return {"input": os.path.join(SHARE, relpath), "relpath": relpath, "name": name,
            "stem": name.split(".", 1)[0] if not name.startswith(".") else name, "index": str(index),
            "job_dir": job_dir, "job_id": job_id}


def fill(text, values):
    """TEXT with the known {placeholders} replaced; any other brace is left as written."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def on_share(path):
    """A path as the job gave it (absolute, or relative to the share), kept inside the share."""
    full = os.path.normpath(path if path.startswith("/") else os.path.join(SHARE, path))
    if full != SHARE and not full.startswith(SHARE + "/"):
        raise ValueError(f"{path} is not on the share")
    return full


def task_of(plan, relpath, index):
    values = placeholders(relpath, index, plan["job_dir"], plan["job_id"])
    return {
        "key": relpath,
        "index": index,
        "argv": [fill(part, values) for part in plan["command"]],
        "stdin": on_share(fill(plan["stdin"], values)) if plan.get("stdin") else None,
        "env": {key: fill(value, values) for key, value in plan.get("env", {}).items()},
        "workdir": on_share(fill(plan["workdir"], values)),
        "timeout_s": plan["task_timeout_s"],
    }


def run_task(task, attempt):
    """Run one task's command; never raises for the command's own failure."""
    import subprocess

    from distributed import get_worker

    worker = get_worker()
    started = time.time()
    cpu_before = os.times()
    result = {"key": task["key"], "index": task["index"], "attempt": attempt, "worker": worker.address,
              "worker_name": str(worker.name), "host": socket.gethostname(), "timed_out": False, "error": ""}
    try:
        os.makedirs(task["workdir"], exist_ok=True)
        with open(task["stdin"] or os.devnull, "rb") as stdin:
            done = subprocess.run(task["argv"], stdin=stdin, capture_output=True, cwd=task["workdir"],
                                  env={**os.environ, **task["env"]}, timeout=task["timeout_s"])
        result.update(exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr)
    except subprocess.TimeoutExpired as exc:
        result.update(exit_code=124, stdout=exc.stdout or b"", stderr=exc.stderr or b"", timed_out=True,
                      error=f"timed out after {task['timeout_s']} s")
    except OSError as exc:
        result.update(exit_code=127, stdout=b"", stderr=b"", error=f"{type(exc).__name__}: {exc}")
    cpu_after = os.times()
    result["seconds"] = round(time.time() - started, 3)
    result["cpu_seconds"] = round((cpu_after.children_user - cpu_before.children_user)
                                  + (cpu_after.children_system - cpu_before.children_system), 3)
    result["started"] = started
    for stream in ("stdout", "stderr"):
        result[stream] = result[stream][-OUTPUT_LIMIT:].decode(errors="replace")
    return result


# Where results go ---------------------------------------------------------------


def worker_host(address):
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


class Stores:
    """The Redis stores of the cluster: one on the scheduler's host, or one per worker VM."""

    def __init__(self, placement, port, job_id):
        import redis

        with open(PASSWORD_FILE) as handle:
            self.password = handle.read().strip()
        self.redis, self.placement, self.port = redis, placement, port
        self.results_key = f"astrostack:job:{job_id}:results"
        self.written_key = f"astrostack:job:{job_id}:written"
        self.meta_key = f"astrostack:job:{job_id}:meta"
        self.clients = {}

    def address_for(self, result):
        if self.placement == "scheduler" or not result.get("worker"):
            return "127.0.0.1" if self.placement == "scheduler" else None
        return worker_host(result["worker"])

    def client(self, host):
        if host not in self.clients:
            self.clients[host] = self.redis.Redis(host=host, port=self.port, password=self.password,
                                                  socket_timeout=10)
        return self.clients[host]

    def write(self, result):
        """True if this was the task's first result; None if there is no store to write to."""
        host = self.address_for(result)
        if host is None:
            return None
        store = self.client(host)
        first = store.hsetnx(self.results_key, result["key"], json.dumps(result))
        if first:
            store.rpush(self.written_key, result["key"])
        result["redis"] = f"{host}:{self.port}"
        return bool(first)

    def meta(self, fields):
        for host in sorted(self.clients) or (["127.0.0.1"] if self.placement == "scheduler" else []):
            self.client(host).hset(self.meta_key, mapping={k: json.dumps(v) for k, v in fields.items()})


# The job ------------------------------------------------------------------------


LOG = []  # output.log of the job, once its folder exists


def say(line):
    print(line, flush=True)
    for handle in LOG:
        handle.write(line + "\n")
        handle.flush()


def inputs_of(plan):
    matches = sorted(glob.glob(os.path.join(SHARE, plan["inputs"]), recursive=True))
    return [os.path.relpath(path, SHARE) for path in matches if os.path.isfile(path)]


def write_json(path, data):
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(path + ".tmp", path)


class Progress:
    def __init__(self, total, started):
        self.total, self.started, self.said_at = total, started, 0.0
        self.succeeded = self.failed = self.retried = 0

    def line(self):
        done = self.succeeded + self.failed
        rate = done / max(time.time() - self.started, 1e-6)
        return (f"progress {done}/{self.total} tasks: {self.succeeded} ok, {self.failed} failed, "
                f"{self.retried} retried, {rate:.1f} tasks/s")

    def maybe_say(self, force=False):
        now = time.time()
        if force or now - self.said_at >= PROGRESS_EVERY_S:
            self.said_at = now
            say(self.line())


def failed_attempt(task, attempt, exc):
    return {"key": task["key"], "index": task["index"], "attempt": attempt, "worker": "", "worker_name": "",
            "host": "", "exit_code": None, "timed_out": False, "stdout": "", "stderr": "", "seconds": 0.0,
            "cpu_seconds": 0.0, "started": time.time(), "error": f"{type(exc).__name__}: {exc}"[:500]}


def run(plan):
    from distributed import Client, as_completed

    job_dir, started = plan["job_dir"], time.time()
    os.makedirs(job_dir, exist_ok=True)
    LOG.append(open(os.path.join(job_dir, "output.log"), "a"))  # noqa: SIM115 (open until the process ends)
    write_json(os.path.join(job_dir, "job.json"), plan)
    with open(os.path.join(job_dir, "command.txt"), "w") as handle:
        handle.write(" ".join(plan["command"]) + "\n")
    inputs = inputs_of(plan)
    if not inputs:
        say(f"no file on the share matches {plan['inputs']}")
        return finish(plan, started, Progress(0, started), [], 0, 0, error=f"no input matches {plan['inputs']}")
    tasks = [task_of(plan, relpath, index) for index, relpath in enumerate(inputs)]
    stores = Stores(plan["redis"], plan["redis_port"], plan["job_id"])
    progress = Progress(len(tasks), started)
    deadline = started + plan["timeout_s"]
    with Client(plan["scheduler"], timeout=30) as client:
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        say(f"job {plan['job_id']}: {len(tasks)} tasks on {workers} Dask workers")

        attempts = {}  # future key -> (task, attempt)

        def submit(task, attempt):
            future = client.submit(run_task, task, attempt, key=f"{plan['job_id']}-{task['index']}-{attempt}",
                                   pure=False)
            attempts[future.key] = (task, attempt)
            return future

        pending = {submit(task, 1) for task in tasks}
        queue = as_completed(pending)
        results, duplicates, unstored = [], 0, 0
        timed_out = False
        for future in queue:
            task, attempt = attempts.pop(future.key)
            try:
                result = future.result()
            except Exception as exc:  # a worker died too often (KilledWorker), a cancelled future...
                result = failed_attempt(task, attempt, exc)
            future.release()
            if (result["exit_code"] != 0) and attempt <= plan["retries"] and time.time() < deadline:
                progress.retried += 1
                queue.add(submit(task, attempt + 1))
                continue
            written = stores.write(result)
            duplicates += written is False
            unstored += written is None
            results.append(result)
            if result["exit_code"] == 0:
                progress.succeeded += 1
            else:
                progress.failed += 1
            progress.maybe_say()
            if time.time() >= deadline and queue.count():
                timed_out = True
                break
        if timed_out:
            say(f"job timeout: {plan['timeout_s']} s passed with {queue.count()} tasks unfinished; cancelling them")
            client.cancel(list(queue.futures))
    progress.maybe_say(force=True)
    return finish(plan, started, progress, results, duplicates, unstored, workers=workers,
                  error="job timed out" if timed_out else "", stores=stores)


def finish(plan, started, progress, results, duplicates, unstored, workers=0, error="", stores=None):
    job_dir = plan["job_dir"]
    seconds = time.time() - started
    with open(os.path.join(job_dir, "results.jsonl"), "w") as handle:
        for result in sorted(results, key=lambda r: r["index"]):
            handle.write(json.dumps(result) + "\n")
    summary = {
        "job_id": plan["job_id"], "tasks": progress.total, "succeeded": progress.succeeded,
        "failed": progress.failed, "retried_attempts": progress.retried, "unfinished": progress.total - len(results),
        "redis_duplicates_refused": duplicates, "results_without_store": unstored, "workers": workers,
        "seconds": round(seconds, 3), "tasks_per_s": round(len(results) / seconds, 3) if seconds > 0 else 0.0,
        "redis": {"placement": plan["redis"], "results_key": f"astrostack:job:{plan['job_id']}:results",
                  "written_key": f"astrostack:job:{plan['job_id']}:written"},
        "error": error,
    }
    ok = not error and progress.failed == 0 and summary["unfinished"] == 0 and progress.total > 0
    summary["exit_code"] = 0 if ok else (124 if error == "job timed out" else 1)
    if stores is not None:
        stores.meta({"state": "done" if ok else "failed", "tasks": progress.total, "succeeded": progress.succeeded,
                     "failed": progress.failed})
    write_json(os.path.join(job_dir, "summary.json"), summary)
    with open(os.path.join(job_dir, "exit_code"), "w") as handle:
        handle.write(f"{summary['exit_code']}\n")
    say("SUMMARY " + json.dumps(summary))
    return summary["exit_code"]


if __name__ == "__main__":
    sys.exit(run(json.loads(base64.b64decode(sys.argv[1]))))
