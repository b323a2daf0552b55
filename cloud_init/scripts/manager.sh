#!/bin/bash
# Manager host: Docker, the share, `docker swarm init` and the overlay network
# (swarm mode) or the cluster's SSH key (mpi mode); then signal Heat and
# start the MPI containers in the background (a task queue: the Dask
# scheduler, and Redis where the spec puts it).
# shellcheck source=common.sh
. /usr/local/lib/astrostack/common.sh

apply_fault_at_start
install_role_packages
start_docker
prefetch_app_image
mount_share
CONTROL=$(control_dir)
OVERLAY_REPORT=""

# Can this kernel carry Docker's encrypted overlay (ESP with AES-GCM)? Tried
# on a throw-away namespace, so no real state is touched.
kernel_has_esp_gcm() {
  local ns="astrostack-esp-$$" ok=1
  ip netns add "$ns" 2>/dev/null || return 1
  ip -n "$ns" xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 reqid 1 mode transport \
    aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128 2>/dev/null && ok=0
  ip netns del "$ns" 2>/dev/null || true
  return "$ok"
}

# The overlay's options (OVERLAY_OPTS): encryption as the spec asks and the
# kernel allows, and an MTU that fits inside the host's (VXLAN takes 50
# bytes, ESP 58 more).
OVERLAY_OPTS=()
choose_overlay_options() {
  local mtu encrypt=false
  case "$OVERLAY_ENCRYPTED" in
    true) kernel_has_esp_gcm || fail "overlay.encrypted is true but this kernel has no ESP with AES-GCM"
          encrypt=true ;;
    auto) if kernel_has_esp_gcm; then encrypt=true; else
            OVERLAY_REPORT="overlay not encrypted: this kernel has no ESP with AES-GCM"; log "$OVERLAY_REPORT"; fi ;;
  esac
  mtu=$(( $(host_mtu) - 50 ))
  if [ "$encrypt" = true ]; then mtu=$(( mtu - 58 )); OVERLAY_OPTS+=(--opt encrypted); fi
  OVERLAY_OPTS+=(--opt "com.docker.network.driver.mtu=$mtu")
}

# The manager's address is published before the join token: a worker waits
# for the token, so it never reads a half-published state.
# Heartbeats every 10 s (Docker's default is 5): a host is taken for dead after
# three missed ones, and a busy host starting many containers missed 15 s
# (its tasks were rescheduled elsewhere, starting the storm again there).
init_swarm() {
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    docker swarm init --advertise-addr "$MANAGER_IP" --dispatcher-heartbeat 10s >/dev/null
  fi
  mark swarm_init
  choose_overlay_options
  if ! docker network inspect "$OVERLAY_NAME" >/dev/null 2>&1; then
    docker network create --driver overlay --attachable --subnet "$OVERLAY_SUBNET" "${OVERLAY_OPTS[@]}" \
      "$OVERLAY_NAME" >/dev/null
  fi
  mark overlay_created
  echo "$MANAGER_IP:2377" >"$CONTROL/swarm-manager.tmp"
  mv "$CONTROL/swarm-manager.tmp" "$CONTROL/swarm-manager"
  docker swarm join-token -q worker | publish_secret "$CONTROL/swarm-worker-token.enc"
}

make_cluster_ssh_key() {
  local tmp
  tmp=$(mktemp -d)
  ssh-keygen -q -t ed25519 -N '' -C "astrostack-$CLUSTER" -f "$tmp/id_ed25519"
  tar -C "$tmp" -c id_ed25519 id_ed25519.pub | publish_secret "$CONTROL/cluster-ssh-key.tar.enc"
  rm -rf "$tmp"
  mark ssh_key
}

if [ "$KIND" = task-queue ]; then
  node_id=""
elif [ "$MODE" = swarm ]; then
  init_swarm
  node_id=$(docker info --format '{{.Swarm.NodeID}}')
else
  make_cluster_ssh_key
  node_id=""
fi

signal_ready "manager ready" "$(success_data "{\"swarm_node\": \"$node_id\", \"overlay_note\": \"$OVERLAY_REPORT\"}")"
trap - ERR
setsid /usr/local/sbin/astrostack-nodes >>/var/log/astrostack-nodes.log 2>&1 </dev/null &
