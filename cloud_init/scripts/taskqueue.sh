#!/bin/bash
# Start a task queue's containers (kind: task-queue), all on the host's
# network, from the application image: on the manager the Dask scheduler
# (astro-dask-scheduler), on each worker VM a Dask worker (astro-dask-worker,
# TQ_PROCESSES processes of TQ_THREADS threads), and Redis (astro-redis) on the
# manager or on every worker VM, as the spec places it. Progress and failures
# go to <share>/.astrostack/nodes-<host>.json, which the cluster probe reads;
# this runs after the host signalled Heat.
#
# The Redis password is derived on the host from the cluster secret
# (HMAC-SHA256), so every host of a cluster has the same one without it ever
# passing through Heat, the share or a command line: it lives in 0600 files
# (the password, redis.conf) mounted read-only into the containers.
# shellcheck source=common.sh
. /usr/local/lib/astrostack/common.sh

REDIS_PASSWORD_FILE="$ASTRO_ETC/redis-password"
REDIS_CONF="$ASTRO_ETC/redis.conf"

# Progress and failures from here on: through the share (common.sh).
report_through_share

write_redis_files() {
  python3 - "$ASTRO_ETC/secret" "$REDIS_PASSWORD_FILE" "$REDIS_CONF" "$(my_ip)" "$TQ_REDIS_PORT" <<'PY'
import hashlib, hmac, os, sys
secret_file, password_file, conf_file, address, port = sys.argv[1:6]
with open(secret_file, "rb") as handle:
    password = hmac.new(handle.read().strip(), b"astrostack redis password", hashlib.sha256).hexdigest()
conf = (f"bind {address} 127.0.0.1\nport {port}\nprotected-mode yes\nrequirepass {password}\n"
        "save \"\"\nappendonly no\ndir /tmp\n")
for path, text in ((password_file, password), (conf_file, conf)):
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)
PY
}

# run_container NAME ARGS...: (re)start one container of the task queue.
run_container() {
  local name=$1
  shift
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker run -d --name "$name" --network host --restart unless-stopped \
    --label "astrostack.cluster=$CLUSTER" "$@" >/dev/null
}

wants_redis() {
  if [ "$ROLE" = manager ]; then [ "$TQ_REDIS" = scheduler ]; else [ "$TQ_REDIS" = per-worker ]; fi
}

start_redis() {
  run_container astro-redis -v "$REDIS_CONF:/etc/astrostack-redis.conf:ro" "$(image_ref)" \
    redis-server /etc/astrostack-redis.conf
}

start_scheduler() {
  local dashboard=(--no-dashboard)
  if [ "$TQ_DASHBOARD" = true ]; then dashboard=(--dashboard-address ":$TQ_DASHBOARD_PORT"); fi
  # A worker that vanishes (its VM gone) is forgotten after 30 s, and its
  # tasks go to the others.
  run_container astro-dask-scheduler -v "$MOUNT_POINT:/share" \
    -v "$REDIS_PASSWORD_FILE:/run/secrets/redis_password:ro" \
    -e DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=30s -e "ASTRO_CLUSTER=$CLUSTER" \
    "$(image_ref)" dask scheduler --host 0.0.0.0 --port "$TQ_SCHEDULER_PORT" "${dashboard[@]}"
}

start_worker() {
  run_container astro-dask-worker -v "$MOUNT_POINT:/share" -e "ASTRO_HOST=$HOST_ID" \
    "$(image_ref)" dask worker "tcp://$MANAGER_IP:$TQ_SCHEDULER_PORT" --name "$HOST_ID" \
    --nworkers "$TQ_PROCESSES" --nthreads "$TQ_THREADS" --host "$(my_ip)" \
    --worker-port "$TQ_WORKER_PORTS" --nanny-port "$TQ_NANNY_PORTS" --no-dashboard \
    --local-directory /tmp/dask-worker
}

status starting "waiting for $(image_ref)"
wait_for_image
retry 60 5 docker pull -q "$(image_ref)" >/dev/null || fail "cannot pull $(image_ref)"
write_redis_files
if wants_redis; then start_redis; fi
if [ "$ROLE" = manager ]; then
  start_scheduler
  status running "dask scheduler started$(wants_redis && echo ', redis started')"
else
  start_worker
  status running "dask worker started ($TQ_PROCESSES x $TQ_THREADS)$(wants_redis && echo ', redis started')"
fi
mark containers_started
