#!/bin/bash
# Start the MPI containers ("nodes"). Swarm mode, on the manager: once every
# host has joined, a master service (1 task, on the manager) and a worker
# service (NODES-1 tasks) on the overlay, with the cluster's SSH key as Swarm
# secrets. MPI mode, on every host: one container on the host network.
# Progress and failures go to <share>/.astrostack/nodes-<host>.json, which the
# cluster probe reads; this runs after the host signalled Heat.
# shellcheck source=common.sh
. /usr/local/lib/astrostack/common.sh

CONTROL=$(control_dir)

# Progress and failures from here on: through the share (common.sh).
report_through_share

ready_swarm_nodes() {
  docker node ls --format '{{.Status}} {{.Availability}}' | grep -c '^Ready Active$' || true
}

wait_for_hosts() {
  local deadline=$(( $(date +%s) + NODES_TIMEOUT ))
  while (( $(ready_swarm_nodes) < HOSTS )); do
    if (( $(date +%s) > deadline )); then
      fail "only $(ready_swarm_nodes)/$HOSTS hosts joined the swarm within $NODES_TIMEOUT s"
    fi
    sleep 1
  done
  mark hosts_joined
}

create_ssh_secrets() {
  local tmp
  if docker secret inspect "$CLUSTER-ssh-key" >/dev/null 2>&1; then return 0; fi
  tmp=$(mktemp -d)
  ssh-keygen -q -t ed25519 -N '' -C "astrostack-$CLUSTER-nodes" -f "$tmp/id_ed25519"
  docker secret create "$CLUSTER-ssh-key" "$tmp/id_ed25519" >/dev/null
  docker secret create "$CLUSTER-ssh-pub" "$tmp/id_ed25519.pub" >/dev/null
  rm -rf "$tmp"
}

create_service() {
  local name=$1 role=$2 replicas=$3
  shift 3
  if docker service inspect "$name" >/dev/null 2>&1; then return 0; fi
  docker service create --detach --quiet --name "$name" --replicas "$replicas" \
    --network "$OVERLAY_NAME" --endpoint-mode dnsrr \
    --hostname '{{.Service.Name}}-{{.Task.Slot}}' \
    --label "astrostack.cluster=$CLUSTER" --label "astrostack.role=$role" \
    --secret "source=$CLUSTER-ssh-key,target=ssh_key,mode=0400" \
    --secret "source=$CLUSTER-ssh-pub,target=ssh_pub,mode=0444" \
    --mount "type=bind,source=$MOUNT_POINT,target=/share" \
    --env "ASTRO_ROLE=$role" --env "ASTRO_CLUSTER=$CLUSTER" --env "ASTRO_SLOTS=$SLOTS" \
    --env "ASTRO_OVERLAY_CIDR=$OVERLAY_SUBNET" --env ASTRO_MPI_PORTS=any \
    --restart-condition any --restart-delay 1s \
    "$@" "$(image_ref)" >/dev/null
}

# Tasks of a service that run now (Running and meant to run).
running_tasks() {
  docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null \
    | grep -c '^Running' || true
}

# Workers are started a few per host at a time: each container start is a burst
# of work for its host (network namespace, overlay endpoint, iptables, sshd),
# and hundreds at once on a few cores starve the engines' heartbeats, so the
# Swarm takes hosts for dead and reschedules their tasks (seen at 10 x 200 on
# 2 cores). A step is HOSTS x START_PER_HOST tasks (2 per core of this host,
# at least 4): small clusters start in one step, 1000 nodes on 12 16-core
# hosts in three.
START_PER_HOST=${START_PER_HOST:-$(( $(nproc) * 2 > 4 ? $(nproc) * 2 : 4 ))}
STEP_TIMEOUT=${STEP_TIMEOUT:-120}

start_workers_in_steps() {
  local total=$1 step=$(( HOSTS * START_PER_HOST )) target deadline
  # Started before (this script runs again after a reboot): as it is.
  if docker service inspect "$CLUSTER-worker" >/dev/null 2>&1; then return 0; fi
  target=$(( step < total ? step : total ))
  create_service "$CLUSTER-worker" worker "$target"
  while :; do
    deadline=$(( $(date +%s) + STEP_TIMEOUT ))
    # The next step once this one runs (or, if it is slow, after STEP_TIMEOUT:
    # the cluster probe and its deadline judge the whole, not this loop).
    while (( $(running_tasks "$CLUSTER-worker") < target && $(date +%s) < deadline )); do sleep 1; done
    (( target < total )) || break
    target=$(( target + step < total ? target + step : total ))
    status starting "starting workers: $target of $total"
    docker service scale --detach "$CLUSTER-worker=$target" >/dev/null
  done
}

start_swarm_services() {
  status starting "waiting for $HOSTS hosts to join"
  wait_for_hosts
  wait_for_image
  create_ssh_secrets
  create_service "$CLUSTER-master" master 1 --constraint node.role==manager
  mark services_created
  if (( NODES > 1 )); then
    start_workers_in_steps $((NODES - 1))
  fi
  status running "services created: 1 master, $((NODES - 1)) workers"
}

start_host_container() {
  local keys
  status starting "starting the MPI container"
  keys=$(mktemp -d)
  fetch_secret "$CONTROL/cluster-ssh-key.tar.enc" 600 | tar -C "$keys" -x
  wait_for_image
  retry 60 5 docker pull "$(image_ref)" >/dev/null || fail "cannot pull $(image_ref)"
  docker rm -f astro-mpi >/dev/null 2>&1 || true
  docker run -d --name astro-mpi --network host --restart unless-stopped \
    --label "astrostack.cluster=$CLUSTER" \
    -v "$keys/id_ed25519:/run/secrets/ssh_key:ro" -v "$keys/id_ed25519.pub:/run/secrets/ssh_pub:ro" \
    -v "$MOUNT_POINT:/share" -e "ASTRO_ROLE=$([ "$ROLE" = manager ] && echo master || echo worker)" \
    -e "ASTRO_CLUSTER=$CLUSTER" -e "ASTRO_SLOTS=$SLOTS" -e ASTRO_SSH_PORT=2222 \
    -e "ASTRO_OVERLAY_CIDR=$PRIVATE_CIDR" "$(image_ref)" >/dev/null
  status running "container astro-mpi started"
}

if [ "$MODE" = swarm ]; then
  start_swarm_services
else
  start_host_container
fi
