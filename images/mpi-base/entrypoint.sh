#!/bin/bash
# astrostack-node: the entrypoint of astrostack/mpi-base and of the images
# built FROM it (astrostack/sagecal), for masters and workers alike, in Swarm
# mode (one container per task, on the overlay) and in MPI mode (one
# container per VM, on the host network).
#
# Without arguments it prepares the node, then becomes sshd: jobs start with
# `docker exec` into the master, whose mpirun reaches the others over ssh.
#   1. the cluster key pair (/run/secrets/ssh_key, ssh_pub) becomes root's
#      id_ed25519 and authorized_keys; missing or mismatched -> exit 1
#   2. ssh client config: port ASTRO_SSH_PORT (default 22), no host key checks
#   3. a fresh host key
#   4. Open MPI is pinned to the local address inside ASTRO_OVERLAY_CIDR and to
#      ASTRO_MPI_PORTS (default 40000-40999, the only ports the security group
#      opens between members; "any" lets Open MPI choose, see below)
#   5. /etc/astrostack-node.json says role, hostname, ip, ...
#   6. exec sshd in the foreground; tini (PID 1) forwards SIGTERM to it
# With arguments it just runs them (`docker run IMAGE mpirun -np 2 mpi_smoke`).
set -euo pipefail

SECRETS_DIR=${ASTRO_SECRETS_DIR:-/run/secrets}
SSH_PORT=${ASTRO_SSH_PORT:-22}
ROLE=${ASTRO_ROLE:-worker}
CLUSTER=${ASTRO_CLUSTER:-}
SLOTS=${ASTRO_SLOTS:-}
CIDR=${ASTRO_OVERLAY_CIDR:-}
# LOW-HIGH: the TCP BTL (rank to rank) gets the lower half, the OOB (mpirun and
# its daemons) the upper half. mpirun listens on EVERY free port of the OOB
# half (Open MPI's design), so a second mpirun started on the same node while
# one runs finds none free: one job at a time per master, or give the second
# job its own `--mca oob_tcp_dynamic_ipv4_ports A-B`. On the Swarm overlay the
# security group sees only VXLAN, so "any" is safe there and lifts that limit.
MPI_PORTS=${ASTRO_MPI_PORTS:-40000-40999}

SSH_DIR=/root/.ssh
HOST_KEY=/etc/ssh/ssh_host_ed25519_key
SSH_CLIENT_CONF=/etc/ssh/ssh_config.d/astrostack.conf
MCA_CONF=/etc/openmpi/openmpi-mca-params.conf
NODE_JSON=/etc/astrostack-node.json

# Set by find_mpi_address.
MPI_IF=
MPI_IP=

log() { printf 'astrostack-node: %s\n' "$*" >&2; }
die() { printf 'astrostack-node: error: %s\n' "$*" >&2; exit 1; }

check_settings() {
  case "$ROLE" in
    master|worker) ;;
    *) die "ASTRO_ROLE must be master or worker, not '$ROLE'" ;;
  esac
  if ! [[ "$SSH_PORT" =~ ^[1-9][0-9]{0,4}$ ]] || (( SSH_PORT < 1 || SSH_PORT > 65535 )); then
    die "ASTRO_SSH_PORT must be a TCP port number, not '$SSH_PORT'"
  fi
  if ! [[ "$SLOTS" =~ ^([1-9][0-9]*)?$ ]]; then
    die "ASTRO_SLOTS must be a positive integer, not '$SLOTS'"
  fi
  local low=${MPI_PORTS%-*} high=${MPI_PORTS#*-}
  if [ "$MPI_PORTS" != any ] && { ! [[ "$MPI_PORTS" =~ ^[1-9][0-9]{3,4}-[1-9][0-9]{3,4}$ ]] \
      || (( low < 1024 || high > 65535 || high - low < 3 )); }; then
    die "ASTRO_MPI_PORTS must be 'any' or a range LOW-HIGH of at least 4 ports within 1024-65535, not '$MPI_PORTS'"
  fi
  if ! [[ "$CLUSTER" =~ ^[A-Za-z0-9_.-]*$ ]]; then
    die "ASTRO_CLUSTER may hold only letters, digits, '.', '_' and '-', not '$CLUSTER'"
  fi
}

# "type base64" of an OpenSSH public key line (drops the comment).
key_body() { awk '{print $1, $2; exit}' <<<"$1"; }

install_keys() {
  local key="$SECRETS_DIR/ssh_key" pub="$SECRETS_DIR/ssh_pub" file derived
  for file in "$key" "$pub"; do
    if ! [ -r "$file" ] || ! [ -s "$file" ]; then
      die "$file is missing or empty: give the container the cluster's SSH key pair as the secrets ssh_key (private) and ssh_pub (public), e.g. -v KEY:$key:ro -v KEY.pub:$pub:ro"
    fi
  done
  install -d -m 0700 "$SSH_DIR"
  install -m 0600 "$key" "$SSH_DIR/id_ed25519"
  install -m 0644 "$pub" "$SSH_DIR/id_ed25519.pub"
  install -m 0600 "$pub" "$SSH_DIR/authorized_keys"
  derived=$(ssh-keygen -y -P '' -f "$SSH_DIR/id_ed25519" 2>/dev/null) \
    || die "$key is not an OpenSSH private key without a passphrase"
  if [ "$(key_body "$derived")" != "$(key_body "$(cat "$pub")")" ]; then
    die "$pub is not the public half of $key"
  fi
}

write_ssh_client_config() {
  cat >"$SSH_CLIENT_CONF" <<EOF
# Written by astrostack-node at start. Cluster members reach each other's sshd
# on port $SSH_PORT with the cluster key; their host keys are made at start,
# so they cannot be known in advance.
Host *
    Port $SSH_PORT
    IdentityFile $SSH_DIR/id_ed25519
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    BatchMode yes
EOF
}

make_host_key() {
  rm -f "$HOST_KEY" "$HOST_KEY.pub"
  ssh-keygen -q -t ed25519 -N '' -C "$(hostname)" -f "$HOST_KEY"
}

local_addresses() {
  ip -o -4 addr show scope global | awk '{printf "%s%s=%s", sep, $2, $4; sep=", "}'
}

# Without ASTRO_OVERLAY_CIDR, a container with a single network may use it; a
# Swarm task also has a docker_gwbridge address, so there it must be set.
guess_cidr() {
  local count dev
  count=$(ip -o -4 addr show scope global | wc -l)
  if (( count != 1 )); then
    die "ASTRO_OVERLAY_CIDR is not set and this container has $count IPv4 networks ($(local_addresses)): set it to the network MPI must use"
  fi
  dev=$(ip -o -4 addr show scope global | awk '{print $2}')
  CIDR=$(ip -o -4 route show dev "$dev" scope link | awk '{print $1; exit}')
  [ -n "$CIDR" ] || die "ASTRO_OVERLAY_CIDR is not set and no link route on $dev tells the network"
  log "ASTRO_OVERLAY_CIDR is not set: using $CIDR, the only network of this container"
}

find_mpi_address() {
  local match
  [ -n "$CIDR" ] || guess_cidr
  if ! [[ "$CIDR" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]]; then
    die "ASTRO_OVERLAY_CIDR must be an IPv4 network like 10.0.9.0/24, not '$CIDR'"
  fi
  # "12: eth0    inet 10.0.9.5/24 brd 10.0.9.255 scope global eth0 ..."
  match=$(ip -o -4 addr show to "$CIDR" | head -n 1)
  if [ -z "$match" ]; then
    die "no address of this container is inside ASTRO_OVERLAY_CIDR=$CIDR (it has: $(local_addresses)); Open MPI would use the wrong network and hang"
  fi
  MPI_IF=$(awk '{print $2}' <<<"$match")
  MPI_IP=$(awk '{print $4}' <<<"$match")
  MPI_IP=${MPI_IP%/*}
}

mca_port_params() {
  local low high half
  [ "$MPI_PORTS" != any ] || return 0
  low=${MPI_PORTS%-*}
  high=${MPI_PORTS#*-}
  half=$(( (high - low + 1) / 2 ))
  printf '%s\n' \
    "# Cluster members open only ports $MPI_PORTS to each other." \
    "btl_tcp_port_min_v4 = $low" \
    "btl_tcp_port_range_v4 = $half" \
    "oob_tcp_dynamic_ipv4_ports = $((low + half))-$high"
}

# Replaces this script's block in the system-wide MCA file, so a restarted
# container does not stack copies. Every Open MPI process of the node reads
# the file, including the orted that mpirun starts here over ssh.
write_mca_params() {
  local tmp="$MCA_CONF.astrostack.tmp"
  sed '/^# BEGIN astrostack-node/,/^# END astrostack-node/d' "$MCA_CONF" >"$tmp"
  cat >>"$tmp" <<EOF
# BEGIN astrostack-node (rewritten at every container start)
# Only the cluster network: a Swarm task also has a docker_gwbridge address,
# the same on every host, and mpirun hangs when it tries that one.
btl_tcp_if_include = $CIDR
oob_tcp_if_include = $CIDR
$(mca_port_params)
plm_rsh_agent = ssh -p $SSH_PORT -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
# END astrostack-node
EOF
  mv "$tmp" "$MCA_CONF"
}

write_node_json() {
  local tmp="$NODE_JSON.tmp"
  printf '{"role": "%s", "cluster": "%s", "hostname": "%s", "ip": "%s", "interface": "%s", "cidr": "%s", "ssh_port": %d, "mpi_ports": "%s", "slots": %s, "cpus": %d}\n' \
    "$ROLE" "$CLUSTER" "$(hostname)" "$MPI_IP" "$MPI_IF" "$CIDR" "$SSH_PORT" \
    "$MPI_PORTS" "${SLOTS:-null}" "$(nproc)" >"$tmp"
  mv "$tmp" "$NODE_JSON"
}

main() {
  if (( $# > 0 )); then
    exec "$@"
  fi
  trap 'log "stopped during start-up"; exit 143' TERM INT
  check_settings
  install_keys
  write_ssh_client_config
  make_host_key
  find_mpi_address
  write_mca_params
  write_node_json
  mkdir -p /run/sshd
  /usr/sbin/sshd -t -p "$SSH_PORT" || die "sshd rejects its configuration (see above)"
  log "$ROLE $(hostname) ready: MPI on $MPI_IF $MPI_IP ($CIDR), sshd on port $SSH_PORT"
  trap - TERM INT
  exec /usr/sbin/sshd -D -e -p "$SSH_PORT"
}

main "$@"
