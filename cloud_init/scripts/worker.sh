#!/bin/bash
# Worker host: Docker, the share (bounded retries), then `docker swarm join`
# (swarm mode) or the cluster's SSH key (mpi mode); then signal Heat and (mpi
# mode) start the MPI container, or (a task queue) the Dask worker and Redis.
# shellcheck source=common.sh
. /usr/local/lib/astrostack/common.sh

apply_fault_at_start
install_role_packages
start_docker
prefetch_app_image
mount_share
CONTROL=$(control_dir)

join_swarm() {
  local token manager
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ]; then return 0; fi
  token=$(fetch_secret "$CONTROL/swarm-worker-token.enc" 600)
  manager=$(cat "$CONTROL/swarm-manager")
  retry 30 5 docker swarm join --token "$token" "$manager" >/dev/null \
    || fail "docker swarm join $manager failed 30 times"
  mark swarm_joined
}

if [ "$MODE" = swarm ] && [ "$KIND" != task-queue ]; then
  join_swarm
  node_id=$(docker info --format '{{.Swarm.NodeID}}')
else
  node_id=""
fi

signal_ready "worker ready" "$(success_data "{\"swarm_node\": \"$node_id\"}")"
trap - ERR
if [ "$MODE" = mpi ] || [ "$KIND" = task-queue ]; then
  setsid /usr/local/sbin/astrostack-nodes >>/var/log/astrostack-nodes.log 2>&1 </dev/null &
fi
