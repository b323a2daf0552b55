"""Run by astrostack inside a task queue's scheduler container (`python3 -`),
never imported there: what the scheduler knows about its workers, and the
smoke test of readiness (a task mapped on every worker, and the Redis stores
written and read back). Prints one JSON line. Needs only the image's Dask and
redis; the Redis password comes from the 0600 file mounted into the container
and is never printed.

    python3 - EXPECTED PLACEMENT REDIS_PORT [--smoke] < dask_remote.py
"""

import json
import socket
import sys
import uuid

SCHEDULER = "tcp://127.0.0.1:8786"
PASSWORD_FILE = "/run/secrets/redis_password"
SMOKE_TIMEOUT_S = 30


def where_am_i(_index):
    from distributed import get_worker

    worker = get_worker()
    return {"worker": worker.address, "name": str(worker.name), "host": socket.gethostname()}


def worker_host(address):
    """tcp://10.0.0.5:40001 -> 10.0.0.5"""
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


def redis_stores(placement, workers):
    """The Redis addresses of the cluster: the scheduler's host, or every worker VM."""
    if placement == "scheduler":
        return ["127.0.0.1"]
    return sorted({worker_host(address) for address in workers})


def check_redis(hosts, port):
    import redis

    with open(PASSWORD_FILE) as handle:
        password = handle.read().strip()
    found = {}
    for host in hosts:
        key, value = "astrostack:smoke", uuid.uuid4().hex
        try:
            store = redis.Redis(host=host, port=port, password=password, socket_timeout=5)
            store.set(key, value, ex=60)
            found[host] = store.get(key) == value.encode()
        except redis.RedisError as exc:
            found[host] = f"{type(exc).__name__}: {exc}"
    return found


def main(argv):
    from distributed import Client

    expected, placement, port = int(argv[0]), argv[1], int(argv[2])
    smoke = "--smoke" in argv
    with Client(SCHEDULER, timeout=10) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        view = {"workers": len(workers), "names": sorted(str(w.get("name")) for w in workers.values())}
        if smoke and len(workers) == expected:
            futures = [client.submit(where_am_i, index, workers=[address], allow_other_workers=False, pure=False)
                       for index, address in enumerate(sorted(workers))]
            answers = client.gather(futures, errors="skip")
            reached = sorted({answer["worker"] for answer in answers})
            redis_ok = check_redis(redis_stores(placement, workers), port)
            view["smoke"] = {"tasks": len(futures), "workers_reached": len(reached),
                             "hosts": sorted({answer["host"] for answer in answers}), "redis": redis_ok,
                             "ok": reached == sorted(workers) and all(v is True for v in redis_ok.values())}
    print(json.dumps(view))


if __name__ == "__main__":
    main(sys.argv[1:])
