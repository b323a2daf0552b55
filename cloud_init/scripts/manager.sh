#!/bin/bash
# Manager host: Docker, the share, `docker swarm init` and the overlay network
# (swarm mode) or the cluster's SSH key (mpi mode); then signal Heat and
# start the MPI containers in the background.
# shellcheck source=common.sh
. /usr/local/lib/astrostack/common.sh

apply_fault_at_start
start_docker
mount_share
CONTROL=$(control_dir)

init_swarm() {
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    docker swarm init --advertise-addr "$MANAGER_IP" >/dev/null
  fi
  mark swarm_init
  local encrypt=()
  if [ "$OVERLAY_ENCRYPTED" = true ]; then encrypt=(--opt encrypted); fi
  if ! docker network inspect "$OVERLAY_NAME" >/dev/null 2>&1; then
    docker network create --driver overlay --attachable --subnet "$OVERLAY_SUBNET" \
      "${encrypt[@]}" "$OVERLAY_NAME" >/dev/null
  fi
  mark overlay_created
  docker swarm join-token -q worker | publish_secret "$CONTROL/swarm-worker-token.enc"
  echo "$MANAGER_IP:2377" >"$CONTROL/swarm-manager"
}

make_cluster_ssh_key() {
  local tmp
  tmp=$(mktemp -d)
  ssh-keygen -q -t ed25519 -N '' -C "astrostack-$CLUSTER" -f "$tmp/id_ed25519"
  tar -C "$tmp" -c id_ed25519 id_ed25519.pub | publish_secret "$CONTROL/cluster-ssh-key.tar.enc"
  rm -rf "$tmp"
  mark ssh_key
}

if [ "$MODE" = swarm ]; then
  init_swarm
  node_id=$(docker info --format '{{.Swarm.NodeID}}')
else
  make_cluster_ssh_key
  node_id=""
fi

signal SUCCESS "manager ready" "$(success_data "{\"swarm_node\": \"$node_id\"}")"
trap - ERR
setsid /usr/local/sbin/astrostack-nodes >>/var/log/astrostack-nodes.log 2>&1 </dev/null &
